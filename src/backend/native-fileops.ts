// Typed access to the optional native addon in native/ (fallocate, SEEK_DATA/
// SEEK_HOLE and block-device ioctls, which Node.js lacks). The addon is built
// separately (`npm run build:native`); when it is missing or fails to load,
// backends keep working on slower paths (writing zeros, reporting everything
// as data), and this module hands them a single warning to log.
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

/** One run of data or hole, in file order, starting where the query started. */
export interface FileExtent {
  readonly length: number;
  readonly hole: boolean;
}

/**
 * Every operation runs on the libuv thread pool. Failures reject with an Error
 * shaped like Node's fs errors: `code` ("EOPNOTSUPP", "EINVAL", …), negative
 * `errno`, `syscall`. Bad arguments (not a non-negative safe integer) throw at
 * once with ERR_INVALID_ARG_TYPE / ERR_OUT_OF_RANGE / ERR_MISSING_ARGS.
 */
export interface NativeFileOps {
  /** fallocate(PUNCH_HOLE|KEEP_SIZE): frees the blocks, the range reads back zeros. */
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  /** fallocate(ZERO_RANGE|KEEP_SIZE); rejects with EOPNOTSUPP where the filesystem can't. */
  zeroRange(fd: number, offset: number, length: number): Promise<void>;
  /** lseek(SEEK_DATA): the next data offset at or after `offset`, or -1 if there is none. */
  seekData(fd: number, offset: number): Promise<number>;
  /** lseek(SEEK_HOLE): the next hole at or after `offset` (end of file counts), or -1 past it. */
  seekHole(fd: number, offset: number): Promise<number>;
  /**
   * Alternating data/hole runs covering `[offset, offset+length)` in one thread-pool hop,
   * at most `maxExtents` (>= 1) of them, so the result may stop short of the end. A range
   * past end of file is reported as hole.
   */
  extents(fd: number, offset: number, length: number, maxExtents: number): Promise<FileExtent[]>;
  /** ioctl(BLKGETSIZE64): the size in bytes of the block device open on `fd`. */
  blockDeviceSize(fd: number): Promise<number>;
  /** ioctl(BLKDISCARD); offset and length must be multiples of the logical block size. */
  blkDiscard(fd: number, offset: number, length: number): Promise<void>;
  /** ioctl(BLKZEROOUT); offset and length must be multiples of the logical block size. */
  blkZeroOut(fd: number, offset: number, length: number): Promise<void>;
  /**
   * preadv2(RWF_NOWAIT) on the calling thread: the bytes read from the page cache
   * (possibly fewer than asked), or -1 when reading would block.
   */
  preadNowait(fd: number, into: Buffer, offset: number): number;
}

export type NativeFileOpsStatus =
  | { readonly available: true; readonly ops: NativeFileOps; readonly path: string }
  | {
      readonly available: false;
      readonly ops: undefined;
      /** One line for the caller to log once; says what is lost and how to fix it. */
      readonly warning: string;
      readonly cause: unknown;
    };

const OPERATION_NAMES = [
  "punchHole",
  "zeroRange",
  "seekData",
  "seekHole",
  "extents",
  "blockDeviceSize",
  "blkDiscard",
  "blkZeroOut",
  "preadNowait",
] as const satisfies readonly (keyof NativeFileOps)[];

// Relative to this module both as source (src/backend/) and compiled (dist/src/backend/).
const ADDON_RELATIVE = "native/build/Release/fileops.node";
export const DEFAULT_ADDON_PATHS: readonly string[] = [
  fileURLToPath(new URL(`../../${ADDON_RELATIVE}`, import.meta.url)),
  fileURLToPath(new URL(`../../../${ADDON_RELATIVE}`, import.meta.url)),
];

function isNativeFileOps(mod: unknown): mod is NativeFileOps {
  if (typeof mod !== "object" || mod === null) return false;
  const record = mod as Record<string, unknown>;
  return OPERATION_NAMES.every((name) => typeof record[name] === "function");
}

function isModuleNotFound(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === "MODULE_NOT_FOUND";
}

/**
 * Try each candidate path in order and report what happened; never throws. A file that
 * exists but fails to load (built for another Node.js ABI, wrong exports) is reported
 * rather than skipped silently, since rebuilding fixes it. Uncached: see nativeFileOps().
 */
export function loadNativeFileOps(
  candidates: readonly string[] = DEFAULT_ADDON_PATHS,
): NativeFileOpsStatus {
  const require = createRequire(import.meta.url);
  let cause: unknown;
  for (const path of candidates) {
    let mod: unknown;
    try {
      mod = require(path);
    } catch (err) {
      if (!isModuleNotFound(err) || cause === undefined) cause = err;
      continue;
    }
    if (isNativeFileOps(mod)) return { available: true, ops: mod, path };
    cause = new Error(`${path} does not export ${OPERATION_NAMES.join(", ")}`);
  }
  const reason = cause instanceof Error ? cause.message.split("\n")[0] : String(cause);
  return {
    available: false,
    ops: undefined,
    warning:
      `native file operations unavailable (${reason}): trim will not free space, ` +
      `write-zeroes writes zeros and block status reports no holes; ` +
      `run "npm run build:native" to build native/`,
    cause,
  };
}

let loaded: NativeFileOpsStatus | undefined;

/** The addon, loaded on first use and shared, so the warning exists once per process. */
export function nativeFileOps(): NativeFileOpsStatus {
  loaded ??= loadNativeFileOps();
  return loaded;
}

/** True for the errors that mean "this file or device can't do that; fall back". */
export function isNotSupported(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "EOPNOTSUPP" || code === "ENOTSUP" || code === "ENOTTY" || code === "ENODEV";
}
