// What the mirror sees of a side's metadata, kept in a file (store.ts) or in
// memory only (memory.ts).
import type { HeaderPatch, MetaHeader, MetaRole } from "./layout.js";

/** Positioned I/O on the metadata file; tests put faults behind it. */
export interface MetaIo {
  /** Reads into `buf` from `offset`; returns the bytes read (fewer at end of file). */
  read(buf: Buffer, offset: number): Promise<number>;
  write(buf: Buffer, offset: number): Promise<void>;
  /** Makes every completed write durable (fdatasync). */
  sync(): Promise<void>;
  close(): Promise<void>;
}

export interface Recovered {
  /** The last run did not close the metadata cleanly. */
  readonly crashed: boolean;
  /** Tracks counted out of sync only because their extent was in the activity log. */
  readonly alTracks: number;
  /** Tracks out of sync in the bitmap as found. */
  readonly bitmapTracks: number;
}

export type CreateMode = "never" | "if-missing" | "overwrite";

export interface OpenOptions {
  readonly volumeSize: number;
  readonly trackSize: number;
  /** Bytes per activity-log extent (default 4 MiB); used only when creating. */
  readonly extentSize?: number;
  /** Extents the activity log may hold (default 1024); used only when creating. */
  readonly alExtents?: number;
  readonly create: CreateMode;
  /** Role recorded when creating (default primary). */
  readonly role?: MetaRole;
}

export interface PairMetadata {
  /** The metadata file, or undefined when nothing is kept. */
  readonly path: string | undefined;
  readonly volumeSize: number;
  readonly trackSize: number;
  readonly trackCount: number;
  readonly header: MetaHeader;
  readonly recovered: Recovered;
  readonly outOfSyncTracks: number;
  /** Bytes covered by stale tracks (the last track may be short). */
  readonly outOfSyncBytes: number;
  markStale(first: number, count: number): void;
  clearStale(track: number): void;
  isStale(track: number): boolean;
  nextStale(from: number): number;
  /**
   * Write intent for tracks about to be written locally: undefined when their
   * extents are already logged, else a promise that settles once they are.
   * Call endWrite once per beginWrite after it settled, whether or not it failed.
   */
  beginWrite(first: number, count: number): Promise<void> | undefined;
  endWrite(first: number, count: number): void;
  /** Every bitmap page changed since it was last written reaches the disk. */
  flushBitmap(): Promise<void>;
  /** Durable change of the pair record; `header` shows it once durable. */
  updateHeader(patch: HeaderPatch): Promise<void>;
  /** clean: the next open trusts the bitmap alone. Not clean: as after a crash. */
  close(clean?: boolean): Promise<void>;
}
