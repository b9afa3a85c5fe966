// Encoders for what a server sends: the greeting, option replies and
// transmission replies. Each returns one Buffer ready for a single write.
import {
  IHAVEOPT,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_REPLY_MAGIC,
  NBD_OPTION_REPLY_HEADER_SIZE,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_HEADER_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBDMAGIC,
} from "../constants.js";
import type { BlockSizeConstraints, Extent } from "../export.js";

const TWO_32 = 0x1_0000_0000;

/** NBDMAGIC, IHAVEOPT and the handshake flags: the server's first 18 bytes. */
export function encodeGreeting(): Buffer {
  const b = Buffer.allocUnsafe(18);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
  return b;
}

export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const length = data?.length ?? 0;
  const b = Buffer.allocUnsafe(NBD_OPTION_REPLY_HEADER_SIZE + length);
  b.writeBigUInt64BE(NBD_OPT_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(length, 16);
  data?.copy(b, NBD_OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** Error replies carry a human-readable message as their data. */
export function encodeOptionError(option: number, type: number, message: string): Buffer {
  return encodeOptionReply(option, type, Buffer.from(message, "utf8"));
}

export function encodeRepServer(option: number, name: string, description: string): Buffer {
  const n = Buffer.from(name, "utf8");
  const d = Buffer.from(description, "utf8");
  const data = Buffer.allocUnsafe(4 + n.length + d.length);
  data.writeUInt32BE(n.length, 0);
  n.copy(data, 4);
  d.copy(data, 4 + n.length);
  return encodeOptionReply(option, NBD_REP_SERVER, data);
}

export function encodeInfoExport(option: number, size: number, flags: number): Buffer {
  const data = Buffer.allocUnsafe(12);
  data.writeUInt16BE(NBD_INFO_EXPORT, 0);
  writeUInt64(data, 2, size);
  data.writeUInt16BE(flags, 10);
  return encodeOptionReply(option, NBD_REP_INFO, data);
}

export function encodeInfoString(option: number, info: number, text: string): Buffer {
  const s = Buffer.from(text, "utf8");
  const data = Buffer.allocUnsafe(2 + s.length);
  data.writeUInt16BE(info, 0);
  s.copy(data, 2);
  return encodeOptionReply(option, NBD_REP_INFO, data);
}

export const encodeInfoName = (option: number, name: string): Buffer =>
  encodeInfoString(option, NBD_INFO_NAME, name);
export const encodeInfoDescription = (option: number, text: string): Buffer =>
  encodeInfoString(option, NBD_INFO_DESCRIPTION, text);

export function encodeInfoBlockSize(option: number, sizes: BlockSizeConstraints): Buffer {
  const data = Buffer.allocUnsafe(14);
  data.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  data.writeUInt32BE(sizes.minimum, 2);
  data.writeUInt32BE(sizes.preferred, 6);
  data.writeUInt32BE(sizes.maximum, 10);
  return encodeOptionReply(option, NBD_REP_INFO, data);
}

export function encodeMetaContext(option: number, id: number, name: string): Buffer {
  const s = Buffer.from(name, "utf8");
  const data = Buffer.allocUnsafe(4 + s.length);
  data.writeUInt32BE(id, 0);
  s.copy(data, 4);
  return encodeOptionReply(option, NBD_REP_META_CONTEXT, data);
}

/** Transmission flags after NBD_OPT_EXPORT_NAME, with the 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  writeUInt64(b, 0, size);
  b.writeUInt16BE(flags, 8);
  return b;
}

export function encodeSimpleReply(error: number, cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(NBD_SIMPLE_REPLY_SIZE);
  writeSimpleReply(b, 0, error, cookieHi, cookieLo);
  return b;
}

/** A simple reply (16 bytes) at `b[at…at+16)`, for a caller gathering several into one buffer. */
export function writeSimpleReply(
  b: Buffer,
  at: number,
  error: number,
  hi: number,
  lo: number,
): void {
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, at);
  b.writeUInt32BE(error, at + 4);
  b.writeUInt32BE(hi, at + 8);
  b.writeUInt32BE(lo, at + 12);
}

function writeChunkHeader(
  b: Buffer,
  flags: number,
  type: number,
  hi: number,
  lo: number,
  length: number,
): void {
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeUInt32BE(hi, 8);
  b.writeUInt32BE(lo, 12);
  b.writeUInt32BE(length, 16);
}

/** Bytes before the data in a successful read reply (simple or OFFSET_DATA chunk). */
export function readReplyOverhead(structured: boolean): number {
  return structured ? NBD_STRUCTURED_REPLY_HEADER_SIZE + 8 : NBD_SIMPLE_REPLY_SIZE;
}

/**
 * One buffer holding the reply header followed by room for `length` bytes of
 * data, so the backend reads straight into the reply and it goes out in one write.
 */
export function allocReadReply(
  structured: boolean,
  cookieHi: number,
  cookieLo: number,
  offset: number,
  length: number,
): Buffer {
  const overhead = readReplyOverhead(structured);
  const b = Buffer.allocUnsafe(overhead + length);
  if (structured) {
    writeChunkHeader(
      b,
      NBD_REPLY_FLAG_DONE,
      NBD_REPLY_TYPE_OFFSET_DATA,
      cookieHi,
      cookieLo,
      8 + length,
    );
    writeUInt64(b, NBD_STRUCTURED_REPLY_HEADER_SIZE, offset);
  } else {
    writeSimpleReply(b, 0, 0, cookieHi, cookieLo);
  }
  return b;
}

export function encodeStructuredError(
  error: number,
  cookieHi: number,
  cookieLo: number,
  message: string,
): Buffer {
  const msg = Buffer.from(message.slice(0, 1024), "utf8");
  const b = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_SIZE + 6 + msg.length);
  writeChunkHeader(
    b,
    NBD_REPLY_FLAG_DONE,
    NBD_REPLY_TYPE_ERROR,
    cookieHi,
    cookieLo,
    6 + msg.length,
  );
  b.writeUInt32BE(error, NBD_STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt16BE(msg.length, NBD_STRUCTURED_REPLY_HEADER_SIZE + 4);
  msg.copy(b, NBD_STRUCTURED_REPLY_HEADER_SIZE + 6);
  return b;
}

export function encodeBlockStatus(
  cookieHi: number,
  cookieLo: number,
  contextId: number,
  extents: readonly Extent[],
  /** 0 for all but the last chunk when several contexts answer one request. */
  flags: number = NBD_REPLY_FLAG_DONE,
): Buffer {
  const length = 4 + 8 * extents.length;
  const b = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_SIZE + length);
  writeChunkHeader(b, flags, NBD_REPLY_TYPE_BLOCK_STATUS, cookieHi, cookieLo, length);
  b.writeUInt32BE(contextId, NBD_STRUCTURED_REPLY_HEADER_SIZE);
  let at = NBD_STRUCTURED_REPLY_HEADER_SIZE + 4;
  for (const e of extents) {
    b.writeUInt32BE(e.length, at);
    b.writeUInt32BE(e.flags, at + 4);
    at += 8;
  }
  return b;
}

function writeUInt64(b: Buffer, at: number, value: number): void {
  b.writeUInt32BE(Math.floor(value / TWO_32), at);
  b.writeUInt32BE(value % TWO_32, at + 4);
}
