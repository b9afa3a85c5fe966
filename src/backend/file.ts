// A volume on a regular file or a block device. Data goes through the libuv
// thread pool, so concurrent requests complete in any order. FUA writes use a
// second descriptor opened O_DSYNC: that write alone is made durable.
import fs from "node:fs";
import { readFile } from "node:fs/promises";
import {
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_ENOTSUP,
} from "../../nbd/constants.js";
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from "../../nbd/constants.js";
import { NbdRequestError } from "../../nbd/errors.js";
import type { Backend, Capabilities, Extent } from "./types.js";
import { isNotSupported, nativeFileOps, type NativeFileOps } from "./native-fileops.js";

export interface FileBackendOptions {
  readOnly?: boolean;
  /** Do small writes on the calling thread (default true); false: always the thread pool. */
  inlineWrites?: boolean;
  /** Largest write done on the calling thread (default 16 KiB). */
  inlineMax?: number;
  /** Create a sparse file of this size when the path does not exist. */
  createSize?: number;
}

export class VolumeOpenError extends Error {
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "VolumeOpenError";
  }
}

const ZERO_CHUNK = 1024 * 1024;
/** Requests up to this size may be done on the calling thread. */
const INLINE_MAX = 16 * 1024;
/**
 * Inline writes that stall add their time (each capped at INLINE_STALL_CAP_MS) to a
 * budget that decays by 1/INLINE_STALL_DECAY per inline write; once it reaches
 * INLINE_STALL_BUDGET_MS the page cache is taken to be pushing back (writeback
 * throttling sleeps 10-200 ms in every writer) and writes go through the thread pool
 * for INLINE_PAUSE_MS. One stall is not enough: on a busy machine the scheduler
 * preempts a write now and then (under a load of 10 on 2 cores about 1 write in
 * 700 took over 1 ms, up to 16 ms, all involuntary switches), and pausing on each of
 * those kept inline writes off for good.
 */
const INLINE_STALL_MS = 1;
const INLINE_STALL_CAP_MS = 32;
const INLINE_STALL_BUDGET_MS = 32;
const INLINE_STALL_DECAY = 256;
const INLINE_PAUSE_MS = 1000;
const DONE = Promise.resolve();
const MAX_EXTENTS = 4096;
let zeroes: Buffer | undefined;

export class FileBackend implements Backend {
  readonly capabilities: Capabilities;
  private inlinePausedUntil = 0;
  /** Milliseconds of recent inline stalls, decaying (see INLINE_STALL_BUDGET_MS). */
  private inlineStalls = 0;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly syncFd: number,
    readonly size: number,
    readonly isBlockDevice: boolean,
    readOnly: boolean,
    private readonly ops: NativeFileOps | null,
    private readonly inlineWrites: boolean,
    private readonly inlineMax: number,
  ) {
    this.capabilities = {
      readOnly,
      flush: true,
      fua: true,
      trim: ops !== null,
      zero: true,
      fastZero: true,
      cache: true,
      blockStatus: true,
      multiConn: true,
    };
  }

  static async open(path: string, options: FileBackendOptions = {}): Promise<FileBackend> {
    const readOnly = options.readOnly ?? false;
    let stat: fs.Stats | undefined;
    try {
      stat = await fs.promises.stat(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw openError(path, err);
    }
    if (stat === undefined) {
      if (options.createSize === undefined)
        throw new VolumeOpenError(
          "ENOENT",
          `${path} does not exist; pass --size SIZE to create it`,
        );
      if (readOnly)
        throw new VolumeOpenError(
          "ENOENT",
          `${path} does not exist and --read-only cannot create it`,
        );
      await createSparse(path, options.createSize);
      stat = await fs.promises.stat(path);
    }
    if (!stat.isFile() && !stat.isBlockDevice())
      throw new VolumeOpenError("EINVAL", `${path} is neither a regular file nor a block device`);
    const mode = readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
    const fd = await openFd(path, mode);
    const syncFd = readOnly ? fd : await openFd(path, mode | fs.constants.O_DSYNC);
    const blockDevice = stat.isBlockDevice();
    const size = blockDevice ? await blockDeviceSize(path, stat) : stat.size;
    return new FileBackend(
      path,
      fd,
      syncFd,
      size,
      blockDevice,
      readOnly,
      nativeFileOps().ops ?? null,
      options.inlineWrites ?? true,
      options.inlineMax ?? INLINE_MAX,
    );
  }

  /**
   * Served from the page cache on the calling thread when it can be without
   * blocking (RWF_NOWAIT); the rest goes through the thread pool.
   */
  read(into: Buffer, offset: number): Promise<void> {
    if (this.ops !== null && into.length <= INLINE_MAX) {
      const n = this.ops.preadNowait(this.fd, into, offset);
      if (n === into.length) return DONE;
      if (n > 0) return this.readFromPool(into.subarray(n), offset + n);
    }
    return this.readFromPool(into, offset);
  }

  private async readFromPool(into: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < into.length) {
      const n = await pread(this.fd, into, done, into.length - done, offset + done);
      if (n === 0) {
        into.fill(0, done); // past the end of a file that shrank under us
        return;
      }
      done += n;
    }
  }

  /**
   * Small writes without FUA go straight to the page cache on the calling thread:
   * a few microseconds, against two wake-ups and a lock for a thread-pool hop.
   * (Linux offers no non-blocking buffered write on ext4, so a write that starts to
   * block, as under writeback throttling, sends writes to the pool for a while.)
   */
  write(data: Buffer, offset: number, flags: number): Promise<void> {
    if (this.inline(data.length, flags)) {
      const start = performance.now();
      let n: number;
      try {
        n = fs.writeSync(this.fd, data, 0, data.length, offset);
      } catch (err) {
        return Promise.reject(err instanceof Error ? err : new Error(String(err)));
      }
      this.noteInlineWrite(start, performance.now() - start);
      if (n === data.length) return DONE;
      return this.writeFromPool(data.subarray(n), offset + n, flags);
    }
    return this.writeFromPool(data, offset, flags);
  }

  /** Whether a write of `length` bytes goes to the page cache on the calling thread. */
  private inline(length: number, flags: number): boolean {
    return (
      length <= this.inlineMax &&
      (flags & NBD_CMD_FLAG_FUA) === 0 &&
      this.inlineWrites &&
      performance.now() >= this.inlinePausedUntil
    );
  }

  private noteInlineWrite(start: number, elapsed: number): void {
    let stalls = this.inlineStalls;
    if (stalls === 0 && elapsed <= INLINE_STALL_MS) return;
    stalls -= stalls / INLINE_STALL_DECAY;
    if (elapsed > INLINE_STALL_MS) stalls += Math.min(elapsed, INLINE_STALL_CAP_MS);
    if (stalls >= INLINE_STALL_BUDGET_MS) {
      this.inlinePausedUntil = start + elapsed + INLINE_PAUSE_MS;
      stalls = 0;
    } else if (stalls < 0.01) {
      stalls = 0;
    }
    this.inlineStalls = stalls;
  }

  /**
   * One pwritev for a payload that arrived in pieces: the kernel gathers them. A
   * small one goes inline, as write() does.
   */
  writev(parts: readonly Buffer[], offset: number, flags: number): Promise<void> {
    let length = 0;
    for (const part of parts) length += part.length;
    if (!this.inline(length, flags)) return this.writevFromPool(parts, offset, flags);
    const start = performance.now();
    let n: number;
    try {
      n = fs.writevSync(this.fd, parts, offset);
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    this.noteInlineWrite(start, performance.now() - start);
    if (n === length) return DONE;
    return this.writevFromPool(rest(parts, n), offset + n, flags);
  }

  private async writevFromPool(
    parts: readonly Buffer[],
    offset: number,
    flags: number,
  ): Promise<void> {
    const fd = (flags & NBD_CMD_FLAG_FUA) !== 0 ? this.syncFd : this.fd;
    let at = offset;
    let left = parts;
    while (left.length > 0) {
      const n = await pwritev(fd, left, at);
      at += n;
      left = rest(left, n);
    }
  }

  private async writeFromPool(data: Buffer, offset: number, flags: number): Promise<void> {
    const fd = (flags & NBD_CMD_FLAG_FUA) !== 0 ? this.syncFd : this.fd;
    let done = 0;
    while (done < data.length)
      done += await pwrite(fd, data, done, data.length - done, offset + done);
  }

  flush(): Promise<void> {
    return new Promise((resolve, reject) =>
      fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())),
    );
  }

  async trim(offset: number, length: number, flags: number): Promise<void> {
    if (this.ops === null) return;
    try {
      if (this.isBlockDevice) await this.ops.blkDiscard(this.fd, offset, length);
      else await this.ops.punchHole(this.fd, offset, length);
    } catch (err) {
      // TRIM is advisory (spec "NBD_CMD_TRIM"): a range the platform won't free stays as it is.
      if (isNotSupported(err) || (err as NodeJS.ErrnoException).code === "EINVAL") return;
      throw err;
    }
    if ((flags & NBD_CMD_FLAG_FUA) !== 0) await this.flush();
  }

  async zero(offset: number, length: number, flags: number): Promise<void> {
    if (await this.zeroFast(offset, length, flags)) {
      if ((flags & NBD_CMD_FLAG_FUA) !== 0) await this.flush();
      return;
    }
    if ((flags & NBD_CMD_FLAG_FAST_ZERO) !== 0)
      throw new NbdRequestError(NBD_ENOTSUP, "zeroing here is no faster than writing");
    zeroes ??= Buffer.alloc(ZERO_CHUNK);
    for (let at = offset; at < offset + length; at += ZERO_CHUNK) {
      const n = Math.min(ZERO_CHUNK, offset + length - at);
      await this.write(zeroes.subarray(0, n), at, flags);
    }
  }

  /** Zero without writing data, when the platform can; false when it cannot. */
  private async zeroFast(offset: number, length: number, flags: number): Promise<boolean> {
    const ops = this.ops;
    if (ops === null) return false;
    try {
      if (this.isBlockDevice) await ops.blkZeroOut(this.fd, offset, length);
      else if ((flags & NBD_CMD_FLAG_NO_HOLE) === 0) await ops.punchHole(this.fd, offset, length);
      else await ops.zeroRange(this.fd, offset, length);
      return true;
    } catch (err) {
      // Devices refuse unaligned ranges with EINVAL: write the zeros instead.
      if (
        isNotSupported(err) ||
        (this.isBlockDevice && (err as NodeJS.ErrnoException).code === "EINVAL")
      )
        return false;
      throw err;
    }
  }

  /** Read the range once so it sits in the page cache (nbdkit's cache=emulate). */
  async cache(offset: number, length: number): Promise<void> {
    const scratch = Buffer.allocUnsafe(Math.min(length, ZERO_CHUNK));
    for (let at = offset; at < offset + length; at += scratch.length) {
      const n = Math.min(scratch.length, offset + length - at);
      await this.read(scratch.subarray(0, n), at);
    }
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const end = Math.min(offset + length, this.size);
    if (this.ops === null || this.isBlockDevice) return [{ length: end - offset, flags: 0 }];
    const runs = await this.ops.extents(this.fd, offset, end - offset, MAX_EXTENTS);
    return runs.map((r) => ({
      length: r.length,
      flags: r.hole ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0,
    }));
  }

  async close(): Promise<void> {
    await closeFd(this.fd);
    if (this.syncFd !== this.fd) await closeFd(this.syncFd);
  }
}

function openError(path: string, err: unknown): VolumeOpenError {
  const code = (err as NodeJS.ErrnoException).code ?? "EIO";
  return new VolumeOpenError(code, `cannot open ${path}: ${(err as Error).message}`, {
    cause: err,
  });
}

async function openFd(path: string, flags: number): Promise<number> {
  try {
    return await new Promise<number>((resolve, reject) =>
      fs.open(path, flags, (err, fd) => (err ? reject(err) : resolve(fd))),
    );
  } catch (err) {
    throw openError(path, err);
  }
}

async function createSparse(path: string, size: number): Promise<void> {
  const handle = await fs.promises.open(path, "wx", 0o644).catch((err: unknown) => {
    throw openError(path, err);
  });
  try {
    await handle.truncate(size);
  } finally {
    await handle.close();
  }
}

/** A block device's size from sysfs (stat reports 0 for devices). */
async function blockDeviceSize(path: string, stat: fs.Stats): Promise<number> {
  const rdev = stat.rdev;
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | (Math.floor(rdev / 4096) & ~0xff);
  try {
    const sectors = await readFile(`/sys/dev/block/${major}:${minor}/size`, "utf8");
    return Number.parseInt(sectors.trim(), 10) * 512;
  } catch (err) {
    throw new VolumeOpenError("EIO", `cannot read the size of block device ${path}`, {
      cause: err,
    });
  }
}

/** What is left of a vector once its first `written` bytes are on disk (short writes are rare on files). */
function rest(parts: readonly Buffer[], written: number): readonly Buffer[] {
  let n = written;
  let i = 0;
  while (i < parts.length && n >= (parts[i] as Buffer).length) n -= (parts[i++] as Buffer).length;
  return i < parts.length && n > 0
    ? [(parts[i] as Buffer).subarray(n), ...parts.slice(i + 1)]
    : parts.slice(i);
}

function pread(
  fd: number,
  buf: Buffer,
  at: number,
  length: number,
  position: number,
): Promise<number> {
  return new Promise((resolve, reject) =>
    fs.read(fd, buf, at, length, position, (err, n) => (err ? reject(err) : resolve(n))),
  );
}

function pwrite(
  fd: number,
  buf: Buffer,
  at: number,
  length: number,
  position: number,
): Promise<number> {
  return new Promise((resolve, reject) =>
    fs.write(fd, buf, at, length, position, (err, n) => (err ? reject(err) : resolve(n))),
  );
}

function pwritev(fd: number, parts: readonly Buffer[], position: number): Promise<number> {
  return new Promise((resolve, reject) =>
    fs.writev(fd, parts as Buffer[], position, (err, n) => (err ? reject(err) : resolve(n))),
  );
}

function closeFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.close(fd, (err) => (err ? reject(err) : resolve())));
}
