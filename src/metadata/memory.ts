// `--metadata none` and RAM volumes: the same interface, nothing outlives the process.
import { StaleBitmap } from "./bitmap.js";
import { newGeneration } from "./generation.js";
import {
  DEFAULT_AL_EXTENTS,
  type HeaderPatch,
  MetaFlag,
  type MetaHeader,
  MetaRole,
  geometry,
} from "./layout.js";
import type { PairMetadata, Recovered } from "./types.js";

export class MemoryMetadata implements PairMetadata {
  readonly path = undefined;
  readonly trackCount: number;
  readonly recovered: Recovered = { crashed: false, alTracks: 0, bitmapTracks: 0 };
  private readonly bits: StaleBitmap;
  private hdr: MetaHeader;

  constructor(
    readonly volumeSize: number,
    readonly trackSize: number,
    role: MetaRole = MetaRole.PRIMARY,
  ) {
    const g = geometry(volumeSize, trackSize, trackSize, 1);
    this.trackCount = g.trackCount;
    this.bits = new StaleBitmap(volumeSize, trackSize, g.trackCount);
    this.hdr = {
      seq: 1,
      volumeSize,
      trackSize,
      extentSize: g.extentSize,
      alExtents: DEFAULT_AL_EXTENTS,
      role,
      flags: MetaFlag.FRESH,
      pairId: "",
      generations: { current: newGeneration(), bitmap: 0n, history: [0n, 0n] },
    };
  }

  get header(): MetaHeader {
    return this.hdr;
  }
  get outOfSyncTracks(): number {
    return this.bits.outOfSyncTracks;
  }
  get outOfSyncBytes(): number {
    return this.bits.outOfSyncBytes;
  }
  markStale(first: number, count: number): void {
    this.bits.markStale(first, count);
  }
  clearStale(track: number): void {
    this.bits.clearStale(track);
  }
  isStale(track: number): boolean {
    return this.bits.isStale(track);
  }
  nextStale(from: number): number {
    return this.bits.nextStale(from);
  }
  beginWrite(): undefined {
    return undefined;
  }
  endWrite(): void {}
  flushBitmap(): Promise<void> {
    return Promise.resolve();
  }
  updateHeader(patch: HeaderPatch): Promise<void> {
    this.hdr = { ...this.hdr, ...patch, seq: this.hdr.seq + 1 };
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

export function createMemoryMetadata(o: {
  volumeSize: number;
  trackSize: number;
  role?: MetaRole;
}): PairMetadata {
  return new MemoryMetadata(o.volumeSize, o.trackSize, o.role);
}
