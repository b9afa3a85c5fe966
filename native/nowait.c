// Inline I/O that never blocks: preadv2/pwritev2 with RWF_NOWAIT. When the page
// cache can serve a request at once, doing it on the calling thread costs a few
// microseconds, while a hop through the thread pool costs two wake-ups and a
// lock; when it cannot (data not cached, writeback throttling, a filesystem
// without NOWAIT support) the call says so and the caller uses the thread pool.
//
// Both functions are synchronous: pwriteNowait(fd, buffer, offset) and
// preadNowait(fd, buffer, offset) return the bytes transferred (possibly fewer
// than asked), or -1 when nothing could be done without blocking. Other errors
// throw an Error shaped like Node's fs errors.

#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/uio.h>

#include <node_api.h>
#include <uv.h>

#include "nowait.h"

typedef ssize_t (*vector_io)(int, const struct iovec *, int, off_t, int);

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  char message[160];
  snprintf(message, sizeof message, "%s: %s, %s", uv_err_name(-err), uv_strerror(-err), syscall);
  napi_throw_error(env, uv_err_name(-err), message);
  return NULL;
}

static napi_value nowait_io(napi_env env, napi_callback_info info, vector_io io,
                            const char *syscall) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  double offset;
  void *data;
  size_t length;
  if (argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok ||
      napi_get_value_double(env, argv[2], &offset) != napi_ok || offset < 0 ||
      offset > 9007199254740991.0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "expected (fd, buffer, offset)");
    return NULL;
  }
  struct iovec iov = {.iov_base = data, .iov_len = length};
  ssize_t n;
  do {
    n = io(fd, &iov, 1, (off_t)offset, RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  napi_value result;
  if (n < 0) {
    if (errno == EAGAIN || errno == EOPNOTSUPP) n = -1;
    else return throw_errno(env, errno, syscall);
  }
  napi_create_int64(env, n, &result);
  return result;
}

static napi_value pwrite_nowait(napi_env env, napi_callback_info info) {
  return nowait_io(env, info, (vector_io)pwritev2, "pwritev2");
}

static napi_value pread_nowait(napi_env env, napi_callback_info info) {
  return nowait_io(env, info, preadv2, "preadv2");
}

void register_nowait(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "pwriteNowait", NAPI_AUTO_LENGTH, pwrite_nowait, NULL, &fn);
  napi_set_named_property(env, exports, "pwriteNowait", fn);
  napi_create_function(env, "preadNowait", NAPI_AUTO_LENGTH, pread_nowait, NULL, &fn);
  napi_set_named_property(env, exports, "preadNowait", fn);
}
