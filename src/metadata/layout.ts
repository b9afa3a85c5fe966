// The metadata file, byte for byte. Pure: no fs, so tests build and damage
// images in memory.
//
//   0            header slot A (4096)      two slots: an update writes the one not
//   4096         header slot B (4096)      holding the newest header, so a torn
//   8192         AL slot A                 write leaves the previous one readable
//   8192+S       AL slot B                 S = round4096(20 + 4*alExtents + 4)
//   8192+2S      bitmap, one bit per track (bit t of byte t>>3, LSB first),
//                padded to 4096-byte pages
//
// Integers are little-endian. Each slot ends its covered bytes with a CRC-32C
// over everything before it.
import { crc32c } from "./crc32c.js";

export const PAGE_SIZE = 4096;
export const TRACKS_PER_PAGE = PAGE_SIZE * 8;
export const FORMAT_VERSION = 1;
export const HEADER_MAGIC = Buffer.from("PCMETA\0\x01", "latin1");
export const AL_MAGIC = Buffer.from("PCMETAAL", "latin1");
export const DEFAULT_EXTENT_SIZE = 4 * 1024 * 1024;
export const DEFAULT_AL_EXTENTS = 1024;

export const MetaRole = { PRIMARY: "primary", SECONDARY: "secondary" } as const;
export type MetaRole = (typeof MetaRole)[keyof typeof MetaRole];

/** Bits of `MetaHeader.flags`. */
export const MetaFlag = {
  /** Closed cleanly: the bitmap alone is the truth, the activity log adds nothing. */
  CLEAN: 1,
  /** This side's image is mid-resync: not a state its source ever had. */
  INCONSISTENT: 2,
  /** Never synced with any peer. */
  FRESH: 4,
} as const;

export interface MetaGenerations {
  readonly current: bigint;
  /** The generation the bitmap counts changes from; 0n when in sync. */
  readonly bitmap: bigint;
  readonly history: readonly [bigint, bigint];
}

export interface MetaHeader {
  readonly seq: number;
  readonly volumeSize: number;
  readonly trackSize: number;
  readonly extentSize: number;
  readonly alExtents: number;
  readonly role: MetaRole;
  readonly flags: number;
  /** 32 hex digits, or "" when unpaired (all zero on disk). */
  readonly pairId: string;
  readonly generations: MetaGenerations;
}

export type HeaderPatch = Partial<Pick<MetaHeader, "role" | "flags" | "pairId" | "generations">>;

// Header slot offsets.
const H_VERSION = 8;
const H_LENGTH = 12;
const H_SEQ = 16;
const H_VOLUME = 24;
const H_TRACK = 32;
const H_EXTENT = 36;
const H_AL_EXTENTS = 40;
const H_ROLE = 44;
const H_FLAGS = 48;
const H_PAIR = 52;
const H_GEN = 72;
/** Bytes covered by the CRC; the CRC follows them. */
export const HEADER_LENGTH = H_GEN + 32;

export type Decoded<T> =
  | { readonly ok: true; readonly value: T }
  | {
      readonly ok: false;
      readonly reason: "magic" | "checksum" | "version";
      readonly version?: number;
    };

export function encodeHeader(h: MetaHeader, into: Buffer = Buffer.alloc(PAGE_SIZE)): Buffer {
  into.fill(0, 0, PAGE_SIZE);
  HEADER_MAGIC.copy(into, 0);
  into.writeUInt32LE(FORMAT_VERSION, H_VERSION);
  into.writeUInt32LE(HEADER_LENGTH, H_LENGTH);
  into.writeBigUInt64LE(BigInt(h.seq), H_SEQ);
  into.writeBigUInt64LE(BigInt(h.volumeSize), H_VOLUME);
  into.writeUInt32LE(h.trackSize, H_TRACK);
  into.writeUInt32LE(h.extentSize, H_EXTENT);
  into.writeUInt32LE(h.alExtents, H_AL_EXTENTS);
  into.writeUInt8(h.role === MetaRole.PRIMARY ? 0 : 1, H_ROLE);
  into.writeUInt32LE(h.flags >>> 0, H_FLAGS);
  if (h.pairId !== "") into.write(h.pairId, H_PAIR, 16, "hex");
  const g = h.generations;
  into.writeBigUInt64LE(g.current, H_GEN);
  into.writeBigUInt64LE(g.bitmap, H_GEN + 8);
  into.writeBigUInt64LE(g.history[0], H_GEN + 16);
  into.writeBigUInt64LE(g.history[1], H_GEN + 24);
  into.writeUInt32LE(crc32c(into, 0, HEADER_LENGTH), HEADER_LENGTH);
  return into;
}

export function decodeHeader(b: Buffer): Decoded<MetaHeader> {
  if (b.length < PAGE_SIZE || !b.subarray(0, 8).equals(HEADER_MAGIC))
    return { ok: false, reason: "magic" };
  const version = b.readUInt32LE(H_VERSION);
  if (version !== FORMAT_VERSION) return { ok: false, reason: "version", version };
  if (b.readUInt32LE(H_LENGTH) !== HEADER_LENGTH) return { ok: false, reason: "checksum" };
  if (crc32c(b, 0, HEADER_LENGTH) !== b.readUInt32LE(HEADER_LENGTH))
    return { ok: false, reason: "checksum" };
  const pair = b.subarray(H_PAIR, H_PAIR + 16);
  const value: MetaHeader = {
    seq: safe(b.readBigUInt64LE(H_SEQ)),
    volumeSize: safe(b.readBigUInt64LE(H_VOLUME)),
    trackSize: b.readUInt32LE(H_TRACK),
    extentSize: b.readUInt32LE(H_EXTENT),
    alExtents: b.readUInt32LE(H_AL_EXTENTS),
    role: b.readUInt8(H_ROLE) === 0 ? MetaRole.PRIMARY : MetaRole.SECONDARY,
    flags: b.readUInt32LE(H_FLAGS),
    pairId: pair.every((x) => x === 0) ? "" : pair.toString("hex"),
    generations: {
      current: b.readBigUInt64LE(H_GEN),
      bitmap: b.readBigUInt64LE(H_GEN + 8),
      history: [b.readBigUInt64LE(H_GEN + 16), b.readBigUInt64LE(H_GEN + 24)],
    },
  };
  return { ok: true, value };
}

// A checksummed value above 2^53 is not one this code wrote; it saturates so
// the size check reports a mismatch rather than a wrong number.
function safe(v: bigint): number {
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

// AL slot offsets.
const A_SEQ = 8;
const A_COUNT = 16;
const A_EXTENTS = 20;

export interface AlRecord {
  readonly seq: number;
  readonly extents: readonly number[];
}

export function alSlotSize(alExtents: number): number {
  return roundPage(A_EXTENTS + 4 * alExtents + 4);
}

/** The slot image of one AL transaction; only its first 24 + 4*count bytes matter. */
export function encodeAl(r: AlRecord, slotSize: number): Buffer {
  const b = Buffer.alloc(slotSize);
  AL_MAGIC.copy(b, 0);
  b.writeBigUInt64LE(BigInt(r.seq), A_SEQ);
  b.writeUInt32LE(r.extents.length, A_COUNT);
  let o = A_EXTENTS;
  for (const e of r.extents) {
    b.writeUInt32LE(e, o);
    o += 4;
  }
  b.writeUInt32LE(crc32c(b, 0, o), o);
  return b;
}

export function decodeAl(b: Buffer, alExtents: number): Decoded<AlRecord> {
  if (b.length < A_EXTENTS + 4 || !b.subarray(0, 8).equals(AL_MAGIC))
    return { ok: false, reason: "magic" };
  const count = b.readUInt32LE(A_COUNT);
  const end = A_EXTENTS + 4 * count;
  if (count > alExtents || end + 4 > b.length) return { ok: false, reason: "checksum" };
  if (crc32c(b, 0, end) !== b.readUInt32LE(end)) return { ok: false, reason: "checksum" };
  const extents: number[] = [];
  for (let o = A_EXTENTS; o < end; o += 4) extents.push(b.readUInt32LE(o));
  return { ok: true, value: { seq: safe(b.readBigUInt64LE(A_SEQ)), extents } };
}

export function roundPage(n: number): number {
  return Math.ceil(n / PAGE_SIZE) * PAGE_SIZE;
}

/** Where everything lives for a given geometry. */
export interface Geometry {
  readonly volumeSize: number;
  readonly trackSize: number;
  readonly extentSize: number;
  readonly alExtents: number;
  readonly trackCount: number;
  readonly tracksPerExtent: number;
  readonly extentCount: number;
  readonly alSlotSize: number;
  readonly alOffset: number;
  readonly bitmapOffset: number;
  readonly bitmapPages: number;
  readonly fileSize: number;
}

export function geometry(
  volumeSize: number,
  trackSize: number,
  extentSize = DEFAULT_EXTENT_SIZE,
  alExtents = DEFAULT_AL_EXTENTS,
): Geometry {
  if (!Number.isSafeInteger(volumeSize) || volumeSize <= 0)
    throw new RangeError(`volume size ${volumeSize}: must be a positive integer`);
  if (!Number.isInteger(trackSize) || trackSize <= 0 || trackSize > 0xffffffff)
    throw new RangeError(`track size ${trackSize}: must be a positive 32-bit integer`);
  if (!Number.isInteger(extentSize) || extentSize <= 0 || extentSize % trackSize !== 0)
    throw new RangeError(
      `extent size ${extentSize}: must be a multiple of the ${trackSize}-byte track`,
    );
  if (extentSize > 0xffffffff) throw new RangeError(`extent size ${extentSize}: above 4 GiB`);
  if (!Number.isInteger(alExtents) || alExtents < 1 || alExtents > 0x100000)
    throw new RangeError(`activity log of ${alExtents} extents: must be 1..1048576`);
  const trackCount = Math.ceil(volumeSize / trackSize);
  const slot = alSlotSize(alExtents);
  const alOffset = 2 * PAGE_SIZE;
  const bitmapOffset = alOffset + 2 * slot;
  const bitmapPages = Math.max(1, Math.ceil(trackCount / TRACKS_PER_PAGE));
  return {
    volumeSize,
    trackSize,
    extentSize,
    alExtents,
    trackCount,
    tracksPerExtent: extentSize / trackSize,
    extentCount: Math.ceil(volumeSize / extentSize),
    alSlotSize: slot,
    alOffset,
    bitmapOffset,
    bitmapPages,
    fileSize: bitmapOffset + bitmapPages * PAGE_SIZE,
  };
}
