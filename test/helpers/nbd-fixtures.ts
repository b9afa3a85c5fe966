// Byte-level fixtures for the server side of the NBD protocol, written out field
// by field from the spec (doc/proto.md) with Buffer.write*BE. They deliberately
// share nothing with nbd/codec/*, so a test comparing the two catches a mistake
// in either. Magic numbers are spelled out here rather than imported for the
// same reason.

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPT_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

const REPLY_FLAG_DONE = 1;
const REPLY_TYPE_OFFSET_DATA = 1;
const REPLY_TYPE_BLOCK_STATUS = 5;
const REPLY_TYPE_ERROR = 0x8001;
const REP_SERVER = 2;
const REP_INFO = 3;
const REP_META_CONTEXT = 4;

export const u16 = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
};

export const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
};

export const u64 = (n: number | bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};

export const utf8 = (s: string): Buffer => Buffer.from(s, "utf8");

export const cat = (...parts: Buffer[]): Buffer => Buffer.concat(parts);

/** The two 32-bit halves the server keeps an 8-byte cookie in. */
export function cookieHalves(cookie: bigint): { hi: number; lo: number } {
  return { hi: Number(cookie >> 32n), lo: Number(cookie & 0xffff_ffffn) };
}

// --- client to server ---

export const clientFlags = (flags: number): Buffer => u32(flags);

/** An option request header alone: lets a test claim a length it never sends. */
export const optionHeader = (option: number, length: number): Buffer =>
  cat(u64(IHAVEOPT), u32(option), u32(length));

export const optionRequest = (option: number, data: Buffer = Buffer.alloc(0)): Buffer =>
  cat(optionHeader(option, data.length), data);

/** NBD_OPT_INFO / NBD_OPT_GO data. */
export function goData(name: string | Buffer, infos: readonly number[]): Buffer {
  const n = typeof name === "string" ? utf8(name) : name;
  return cat(u32(n.length), n, u16(infos.length), ...infos.map(u16));
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data. */
export function metaContextData(name: string, queries: readonly string[]): Buffer {
  const n = utf8(name);
  const qs = queries.map((q) => cat(u32(utf8(q).length), utf8(q)));
  return cat(u32(n.length), n, u32(queries.length), ...qs);
}

export interface RequestFields {
  flags?: number;
  type: number;
  cookie: bigint;
  offset: number | bigint;
  length: number;
}

/** A transmission request header, followed by `payload` when given. */
export function request(r: RequestFields, payload?: Buffer): Buffer {
  const header = cat(
    u32(REQUEST_MAGIC),
    u16(r.flags ?? 0),
    u16(r.type),
    u64(r.cookie),
    u64(r.offset),
    u32(r.length),
  );
  return payload === undefined ? header : cat(header, payload);
}

// --- server to client ---

/** Handshake flags FIXED_NEWSTYLE | NO_ZEROES unless told otherwise. */
export const greeting = (handshakeFlags = 0b11): Buffer =>
  cat(u64(NBDMAGIC), u64(IHAVEOPT), u16(handshakeFlags));

export const optionReply = (option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer =>
  cat(u64(OPT_REPLY_MAGIC), u32(option), u32(type), u32(data.length), data);

export const repServer = (option: number, name: string, description: string): Buffer =>
  optionReply(option, REP_SERVER, cat(u32(utf8(name).length), utf8(name), utf8(description)));

export const infoExport = (option: number, size: number, flags: number): Buffer =>
  optionReply(option, REP_INFO, cat(u16(0), u64(size), u16(flags)));

export const infoName = (option: number, name: string): Buffer =>
  optionReply(option, REP_INFO, cat(u16(1), utf8(name)));

export const infoDescription = (option: number, text: string): Buffer =>
  optionReply(option, REP_INFO, cat(u16(2), utf8(text)));

export const infoBlockSize = (option: number, min: number, preferred: number, max: number) =>
  optionReply(option, REP_INFO, cat(u16(3), u32(min), u32(preferred), u32(max)));

export const metaContextReply = (option: number, id: number, name: string): Buffer =>
  optionReply(option, REP_META_CONTEXT, cat(u32(id), utf8(name)));

/** The reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and maybe 124 zeros. */
export const exportNameReply = (size: number, flags: number, zeroes: boolean): Buffer =>
  cat(u64(size), u16(flags), Buffer.alloc(zeroes ? 124 : 0));

export const simpleReply = (error: number, cookie: bigint, data?: Buffer): Buffer =>
  cat(u32(SIMPLE_REPLY_MAGIC), u32(error), u64(cookie), data ?? Buffer.alloc(0));

export const structuredChunk = (
  flags: number,
  type: number,
  cookie: bigint,
  payload: Buffer,
): Buffer =>
  cat(
    u32(STRUCTURED_REPLY_MAGIC),
    u16(flags),
    u16(type),
    u64(cookie),
    u32(payload.length),
    payload,
  );

export const offsetDataChunk = (cookie: bigint, offset: number, data: Buffer): Buffer =>
  structuredChunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, cat(u64(offset), data));

export const structuredErrorChunk = (cookie: bigint, error: number, message: string): Buffer =>
  structuredChunk(
    REPLY_FLAG_DONE,
    REPLY_TYPE_ERROR,
    cookie,
    cat(u32(error), u16(utf8(message).length), utf8(message)),
  );

export const blockStatusChunk = (
  cookie: bigint,
  contextId: number,
  extents: readonly { length: number; flags: number }[],
): Buffer =>
  structuredChunk(
    REPLY_FLAG_DONE,
    REPLY_TYPE_BLOCK_STATUS,
    cookie,
    cat(u32(contextId), ...extents.map((e) => cat(u32(e.length), u32(e.flags)))),
  );

// --- reading what a server sent ---

export interface OptionReplyFields {
  option: number;
  type: number;
  data: Buffer;
}

/** Decode one option reply header (20 bytes); the data follows it. */
export function optionReplyHeader(b: Buffer): { option: number; type: number; length: number } {
  if (b.readBigUInt64BE(0) !== OPT_REPLY_MAGIC) throw new Error(`bad option reply magic`);
  return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), length: b.readUInt32BE(16) };
}

export interface ChunkFields {
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}

/** Decode one structured reply chunk header (20 bytes). */
export function chunkHeader(b: Buffer): ChunkFields {
  if (b.readUInt32BE(0) !== STRUCTURED_REPLY_MAGIC) throw new Error("bad structured reply magic");
  return {
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    cookie: b.readBigUInt64BE(8),
    length: b.readUInt32BE(16),
  };
}

/** Decode one simple reply header (16 bytes). */
export function simpleReplyHeader(b: Buffer): { error: number; cookie: bigint } {
  if (b.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error("bad simple reply magic");
  return { error: b.readUInt32BE(4), cookie: b.readBigUInt64BE(8) };
}
