// Persistent pair metadata (DRBD-style) beside a volume: the out-of-sync
// bitmap, an activity log for write intent, and the pair record.
export { ActivityLog, type AlSink } from "./activity-log.js";
export { StaleBitmap } from "./bitmap.js";
export { crc32c } from "./crc32c.js";
export { MetadataError, MetadataErrorCode } from "./errors.js";
export { newGeneration } from "./generation.js";
export {
  DEFAULT_AL_EXTENTS,
  DEFAULT_EXTENT_SIZE,
  type HeaderPatch,
  MetaFlag,
  type MetaGenerations,
  type MetaHeader,
  MetaRole,
} from "./layout.js";
export { MemoryMetadata, createMemoryMetadata } from "./memory.js";
export { FileMetaIo, openMetadata } from "./open.js";
export { FileMetadata, formatMetadata } from "./store.js";
export type { CreateMode, MetaIo, OpenOptions, PairMetadata, Recovered } from "./types.js";
export { type IoOp, MemoryMetaIo } from "./memory-io.js";
