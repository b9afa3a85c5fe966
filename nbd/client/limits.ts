// What the client may send, derived from the negotiated transmission flags and
// block sizes (spec: "Transmission flags", "Size constraints").
import {
  NBD_CMD_NAMES,
  NBD_EINVAL,
  NBD_ENOTSUP,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_MAX_PAYLOAD,
} from "../constants.js";
import { NbdRequestError } from "../errors.js";
import type { BlockSizeConstraints, ExportCapabilities } from "../export.js";

/**
 * Commands without a payload still carry a 32-bit length; longer ranges are
 * split at 2 GiB, a multiple of every legal minimum block size.
 */
export const MAX_EFFECT_LENGTH = 2 ** 31;

export function capabilitiesFrom(flags: number, blockStatus: boolean): ExportCapabilities {
  // Without NBD_FLAG_HAS_FLAGS the other bits mean nothing.
  const has = (bit: number): boolean => (flags & NBD_FLAG_HAS_FLAGS) !== 0 && (flags & bit) !== 0;
  const zero = has(NBD_FLAG_SEND_WRITE_ZEROES);
  return Object.freeze({
    readOnly: has(NBD_FLAG_READ_ONLY),
    flush: has(NBD_FLAG_SEND_FLUSH),
    fua: has(NBD_FLAG_SEND_FUA),
    trim: has(NBD_FLAG_SEND_TRIM),
    zero,
    fastZero: zero && has(NBD_FLAG_SEND_FAST_ZERO),
    cache: has(NBD_FLAG_SEND_CACHE),
    blockStatus,
    multiConn: has(NBD_FLAG_CAN_MULTI_CONN),
  });
}

/**
 * The largest READ/WRITE the client sends: the server's maximum payload,
 * never more than 32 MiB, rounded down to whole preferred (or minimum) blocks.
 */
export function maxPayloadPiece(sizes: BlockSizeConstraints | undefined): number {
  const minimum = sizes?.minimum ?? 1;
  const maximum = Math.min(sizes?.maximum ?? NBD_MAX_PAYLOAD, NBD_MAX_PAYLOAD);
  const preferred = sizes?.preferred ?? 1;
  const unit = maximum >= preferred ? preferred : minimum;
  return Math.max(minimum, Math.floor(maximum / unit) * unit);
}

export function commandName(command: number): string {
  return NBD_CMD_NAMES[command] ?? `command ${command}`;
}

export function unsupported(command: number, flag: string): NbdRequestError {
  return new NbdRequestError(
    NBD_ENOTSUP,
    `${commandName(command)} is not supported by the server (${flag} is not set)`,
  );
}

export function checkFlags(command: number, flags: number, allowed: number): void {
  if (!Number.isInteger(flags) || (flags & ~allowed) !== 0 || flags < 0 || flags > 0xffff) {
    throw new NbdRequestError(
      NBD_EINVAL,
      `${commandName(command)}: command flags 0x${flags.toString(16)} are not valid here`,
    );
  }
}

/** The caller's range must lie inside the export and respect the minimum block size. */
export function checkRange(
  command: number,
  offset: number,
  length: number,
  size: number,
  minimum: number,
): void {
  const end = offset + length;
  const valid = Number.isSafeInteger(offset) && offset >= 0 && Number.isSafeInteger(length);
  if (valid && length >= 0 && end <= size && offset % minimum === 0) {
    if (end % minimum === 0 || end === size) return;
  }
  const name = commandName(command);
  if (!valid || length < 0) {
    throw new NbdRequestError(NBD_EINVAL, `${name}: bad offset ${offset} or length ${length}`);
  }
  if (end > size) {
    throw new NbdRequestError(
      NBD_EINVAL,
      `${name} at offset ${offset} length ${length} goes past the end of the export (${size} bytes)`,
    );
  }
  throw new NbdRequestError(
    NBD_EINVAL,
    `${name} at offset ${offset} length ${length} is not aligned to the server's minimum block size ${minimum}`,
  );
}
