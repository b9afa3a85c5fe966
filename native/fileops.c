// Linux file and block-device operations that Node.js does not expose:
// fallocate(2) hole punching and range zeroing, lseek(2) SEEK_DATA/SEEK_HOLE,
// and the BLKGETSIZE64 / BLKDISCARD / BLKZEROOUT ioctls.
//
// Every call can block for a long time (fallocate on a large range, a discard
// on a slow device), so each one runs as napi async work on the libuv thread
// pool and returns a Promise, like fs.promises. Failures reject with an Error
// shaped like Node's own fs errors (code, errno, syscall) so that code mapping
// `err.code` to NBD error numbers needs no special case.
//
// Argument mistakes are the caller's bug, not an I/O failure: they throw
// synchronously (TypeError / RangeError with a Node-style ERR_* code).

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#include "nowait.h"

// Largest integer a JS number holds exactly: anything above would already have
// lost precision before reaching us.
#define MAX_SAFE_INTEGER 9007199254740991LL

typedef enum {
  OP_PUNCH_HOLE,
  OP_ZERO_RANGE,
  OP_SEEK_DATA,
  OP_SEEK_HOLE,
  OP_EXTENTS,
  OP_BLOCK_DEVICE_SIZE,
  OP_BLK_DISCARD,
  OP_BLK_ZEROOUT,
} op_kind;

// Arguments are always taken in this order; `argc` says how many an op uses:
// fd, offset, length, maxExtents.
typedef struct {
  const char *name;
  op_kind kind;
  size_t argc;
} op_spec;

static const op_spec OPS[] = {
    {"punchHole", OP_PUNCH_HOLE, 3},
    {"zeroRange", OP_ZERO_RANGE, 3},
    {"seekData", OP_SEEK_DATA, 2},
    {"seekHole", OP_SEEK_HOLE, 2},
    {"extents", OP_EXTENTS, 4},
    {"blockDeviceSize", OP_BLOCK_DEVICE_SIZE, 1},
    {"blkDiscard", OP_BLK_DISCARD, 3},
    {"blkZeroOut", OP_BLK_ZEROOUT, 3},
};

static const char *const ARG_NAMES[] = {"fd", "offset", "length", "maxExtents"};

typedef struct {
  int64_t length;
  bool hole;
} extent;

typedef struct {
  op_kind kind;
  int fd;
  int64_t offset;
  int64_t length;
  int64_t max_extents;
  // Filled on the worker thread, read on the main thread after it finishes.
  int err;
  const char *syscall;
  int64_t value;
  extent *extents;
  size_t n_extents;
  size_t cap_extents;
  napi_deferred deferred;
  napi_async_work work;
} request;

// ---- worker thread: plain syscalls, no napi calls allowed here ----

static void fail(request *req, const char *syscall) {
  req->err = errno;
  req->syscall = syscall;
}

static int do_fallocate(request *req, int mode) {
  int rc;
  do rc = fallocate(req->fd, mode, req->offset, req->length);
  while (rc < 0 && errno == EINTR);
  return rc;
}

static int do_range_ioctl(request *req, unsigned long cmd) {
  // BLKDISCARD and BLKZEROOUT take {start, length} in bytes; both must be
  // multiples of the logical block size or the kernel answers EINVAL.
  uint64_t range[2] = {(uint64_t)req->offset, (uint64_t)req->length};
  int rc;
  do rc = ioctl(req->fd, cmd, range);
  while (rc < 0 && errno == EINTR);
  return rc;
}

// Append an extent, merging with the previous one of the same kind: a write
// racing with the scan can make SEEK_DATA land exactly where SEEK_HOLE said a
// hole began, and callers expect kinds to alternate.
static bool push_extent(request *req, int64_t length, bool hole) {
  if (req->n_extents > 0 && req->extents[req->n_extents - 1].hole == hole) {
    req->extents[req->n_extents - 1].length += length;
    return true;
  }
  if (req->n_extents == req->cap_extents) {
    size_t cap = req->cap_extents ? req->cap_extents * 2 : 16;
    extent *grown = realloc(req->extents, cap * sizeof *grown);
    if (!grown) {
      errno = ENOMEM;
      fail(req, "realloc");
      return false;
    }
    req->extents = grown;
    req->cap_extents = cap;
  }
  req->extents[req->n_extents++] = (extent){length, hole};
  return true;
}

// Walk [offset, offset+length) with SEEK_DATA/SEEK_HOLE in one thread-pool hop,
// so one NBD_CMD_BLOCK_STATUS costs one round trip to the pool, not two per
// extent. Filesystems without hole tracking report everything as data, which
// is the truth as far as anyone can tell.
static void scan_extents(request *req) {
  int64_t pos = req->offset;
  int64_t end = req->offset + req->length;
  while (pos < end && (int64_t)req->n_extents < req->max_extents) {
    off_t data = lseek(req->fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno != ENXIO) {
        fail(req, "lseek");
        return;
      }
      // No data at or after pos (including past end of file): all hole.
      push_extent(req, end - pos, true);
      return;
    }
    if (data > pos) {
      int64_t stop = data < end ? data : end;
      if (!push_extent(req, stop - pos, true)) return;
      pos = stop;
      continue;
    }
    off_t hole = lseek(req->fd, pos, SEEK_HOLE);
    if (hole < 0) {
      fail(req, "lseek");
      return;
    }
    int64_t stop = hole < end ? hole : end;
    if (!push_extent(req, stop - pos, false)) return;
    pos = stop;
  }
}

static void execute(napi_env env, void *data) {
  (void)env;
  request *req = data;
  switch (req->kind) {
    case OP_PUNCH_HOLE:
      if (do_fallocate(req, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) < 0)
        fail(req, "fallocate");
      break;
    case OP_ZERO_RANGE:
      // EOPNOTSUPP here (tmpfs, NFS, older filesystems) tells the caller to
      // write zeros itself.
      if (do_fallocate(req, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE) < 0)
        fail(req, "fallocate");
      break;
    case OP_SEEK_DATA:
    case OP_SEEK_HOLE: {
      off_t r = lseek(req->fd, req->offset, req->kind == OP_SEEK_DATA ? SEEK_DATA : SEEK_HOLE);
      // ENXIO means "no more data" (or offset past end of file), not a failure.
      if (r < 0 && errno != ENXIO) fail(req, "lseek");
      req->value = r < 0 ? -1 : r;
      break;
    }
    case OP_EXTENTS:
      scan_extents(req);
      break;
    case OP_BLOCK_DEVICE_SIZE: {
      uint64_t size = 0;
      if (ioctl(req->fd, BLKGETSIZE64, &size) < 0) {
        fail(req, "ioctl");
      } else if (size > (uint64_t)MAX_SAFE_INTEGER) {
        errno = EOVERFLOW;
        fail(req, "ioctl");
      }
      req->value = (int64_t)size;
      break;
    }
    case OP_BLK_DISCARD:
      if (do_range_ioctl(req, BLKDISCARD) < 0) fail(req, "ioctl");
      break;
    case OP_BLK_ZEROOUT:
      if (do_range_ioctl(req, BLKZEROOUT) < 0) fail(req, "ioctl");
      break;
  }
}

// ---- main thread: build results and settle the promise ----

static napi_value errno_error(napi_env env, int err, const char *syscall) {
  // libuv names ENOTSUP/EOPNOTSUPP (the same number on Linux) "ENOTSUP" and
  // describes it as a socket error; fallocate(2) documents EOPNOTSUPP.
  const char *code = err == EOPNOTSUPP ? "EOPNOTSUPP" : uv_err_name(-err);
  const char *desc = err == EOPNOTSUPP ? "operation not supported" : uv_strerror(-err);
  char message[256];
  snprintf(message, sizeof message, "%s: %s, %s", code, desc, syscall);

  napi_value code_v, message_v, error, errno_v, syscall_v;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_v);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &message_v);
  napi_create_error(env, code_v, message_v, &error);
  // Negative like Node's fs errors, so util.getSystemErrorName(err.errno) works.
  napi_create_int32(env, -err, &errno_v);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_v);
  napi_set_named_property(env, error, "errno", errno_v);
  napi_set_named_property(env, error, "syscall", syscall_v);
  return error;
}

static napi_value extents_array(napi_env env, const request *req) {
  napi_value array;
  napi_create_array_with_length(env, req->n_extents, &array);
  for (size_t i = 0; i < req->n_extents; i++) {
    napi_value item, length, hole;
    napi_create_object(env, &item);
    napi_create_int64(env, req->extents[i].length, &length);
    napi_get_boolean(env, req->extents[i].hole, &hole);
    napi_set_named_property(env, item, "length", length);
    napi_set_named_property(env, item, "hole", hole);
    napi_set_element(env, array, (uint32_t)i, item);
  }
  return array;
}

static void complete(napi_env env, napi_status status, void *data) {
  request *req = data;
  napi_value result;
  if (status != napi_ok) {
    napi_value message;
    napi_create_string_utf8(env, "native file operation was cancelled", NAPI_AUTO_LENGTH,
                            &message);
    napi_create_error(env, NULL, message, &result);
    napi_reject_deferred(env, req->deferred, result);
  } else if (req->err != 0) {
    napi_reject_deferred(env, req->deferred, errno_error(env, req->err, req->syscall));
  } else {
    switch (req->kind) {
      case OP_SEEK_DATA:
      case OP_SEEK_HOLE:
      case OP_BLOCK_DEVICE_SIZE:
        napi_create_int64(env, req->value, &result);
        break;
      case OP_EXTENTS:
        result = extents_array(env, req);
        break;
      default:
        napi_get_undefined(env, &result);
    }
    napi_resolve_deferred(env, req->deferred, result);
  }
  napi_delete_async_work(env, req->work);
  free(req->extents);
  free(req);
}

// ---- argument checks and the JS entry point ----

// Accept only non-negative integers a JS number represents exactly. The value
// goes through napi_get_value_double first because napi_get_value_int64 would
// silently truncate 1.5 to 1 and turn NaN into 0.
static bool get_int(napi_env env, napi_value v, size_t index, int64_t max, int64_t *out) {
  const char *name = ARG_NAMES[index];
  char message[128];
  napi_valuetype type;
  napi_typeof(env, v, &type);
  if (type != napi_number) {
    snprintf(message, sizeof message, "The \"%s\" argument must be of type number", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
    return false;
  }
  double d;
  napi_get_value_double(env, v, &d);
  if (!(d >= 0 && d <= (double)max && d == floor(d))) {
    snprintf(message, sizeof message,
             "The value of \"%s\" is out of range. It must be an integer >= 0 and <= %lld. "
             "Received %g",
             name, (long long)max, d);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", message);
    return false;
  }
  return napi_get_value_int64(env, v, out) == napi_ok;
}

static napi_value dispatch(napi_env env, napi_callback_info info) {
  const op_spec *spec;
  napi_value argv[4];
  size_t argc = 4;
  napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&spec);
  if (argc < spec->argc) {
    char message[128];
    snprintf(message, sizeof message, "%s expects %zu arguments, received %zu", spec->name,
             spec->argc, argc);
    napi_throw_type_error(env, "ERR_MISSING_ARGS", message);
    return NULL;
  }
  int64_t args[4] = {0, 0, 0, 0};
  for (size_t i = 0; i < spec->argc; i++) {
    if (!get_int(env, argv[i], i, i == 0 ? INT_MAX : MAX_SAFE_INTEGER, &args[i])) return NULL;
  }
  // An empty answer would break the "covers at least the first byte" promise
  // that block-status callers rely on.
  if (spec->kind == OP_EXTENTS && args[3] == 0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "The value of \"maxExtents\" must be >= 1");
    return NULL;
  }

  request *req = calloc(1, sizeof *req);
  if (!req) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  req->kind = spec->kind;
  req->fd = (int)args[0];
  req->offset = args[1];
  req->length = args[2];
  req->max_extents = args[3];

  napi_value promise, resource_name;
  napi_create_promise(env, &req->deferred, &promise);
  napi_create_string_utf8(env, spec->name, NAPI_AUTO_LENGTH, &resource_name);
  napi_create_async_work(env, NULL, resource_name, execute, complete, req, &req->work);
  if (napi_queue_async_work(env, req->work) != napi_ok) {
    napi_delete_async_work(env, req->work);
    free(req);
    napi_throw_error(env, NULL, "could not queue native file operation");
    return NULL;
  }
  return promise;
}

static napi_value init(napi_env env, napi_value exports) {
  for (size_t i = 0; i < sizeof OPS / sizeof OPS[0]; i++) {
    napi_value fn;
    napi_create_function(env, OPS[i].name, NAPI_AUTO_LENGTH, dispatch, (void *)&OPS[i], &fn);
    napi_set_named_property(env, exports, OPS[i].name, fn);
  }
  register_nowait(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
