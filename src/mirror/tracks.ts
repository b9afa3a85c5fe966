// Per-track replication state of the primary. Two facts per track:
//  - pending: writes to the track that the secondary has not acknowledged yet
//    (the write-intent part: set before the local write, cleared lazily when the
//    last of them is acknowledged);
//  - out of sync: the secondary may hold stale data for the whole track, so only
//    a full copy of the track (resync) clears it. These bits live in the pair's
//    metadata (src/metadata/) when it is kept, so they outlast a restart.

/** One bit per track; the metadata module's bitmap implements it too. */
export interface StaleBits {
  readonly outOfSyncTracks: number;
  readonly outOfSyncBytes: number;
  markStale(first: number, count: number): void;
  clearStale(track: number): void;
  isStale(track: number): boolean;
  nextStale(from: number): number;
}

export class TrackState {
  readonly trackCount: number;
  private readonly pending: Uint32Array;
  private pendingTracks = 0;
  readonly bits: StaleBits;

  constructor(
    readonly volumeSize: number,
    readonly trackSize: number,
    bits?: StaleBits,
  ) {
    this.trackCount = Math.ceil(volumeSize / trackSize);
    this.pending = new Uint32Array(this.trackCount);
    this.bits = bits ?? new MemoryStaleBits(volumeSize, trackSize);
  }

  /** Tracks the secondary may not have. */
  get outOfSyncTracks(): number {
    return this.bits.outOfSyncTracks;
  }

  get pendingTrackCount(): number {
    return this.pendingTracks;
  }

  /** Bytes covered by stale tracks (the last track may be short). */
  get outOfSyncBytes(): number {
    return this.bits.outOfSyncBytes;
  }

  addPending(first: number, count: number): void {
    const p = this.pending;
    for (let t = first; t < first + count; t++) {
      if (p[t] === 0) this.pendingTracks++;
      p[t] = (p[t] as number) + 1;
    }
  }

  /** One acknowledged (or abandoned) write on a track; abandoned ones also mark it stale. */
  releasePending(track: number, abandoned: boolean): void {
    const n = (this.pending[track] as number) - 1;
    this.pending[track] = n;
    if (n === 0) this.pendingTracks--;
    if (abandoned) this.bits.markStale(track, 1);
  }

  hasPending(track: number): boolean {
    return (this.pending[track] as number) > 0;
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
}

/** The stale bits in memory only (`--metadata none`). */
export class MemoryStaleBits implements StaleBits {
  readonly trackCount: number;
  private readonly stale: Uint32Array;
  private staleCount = 0;

  constructor(
    readonly volumeSize: number,
    readonly trackSize: number,
  ) {
    this.trackCount = Math.ceil(volumeSize / trackSize);
    this.stale = new Uint32Array(Math.ceil(this.trackCount / 32));
  }

  get outOfSyncTracks(): number {
    return this.staleCount;
  }

  get outOfSyncBytes(): number {
    let bytes = this.staleCount * this.trackSize;
    const last = this.trackCount - 1;
    if (last >= 0 && this.isStale(last))
      bytes -= this.trackCount * this.trackSize - this.volumeSize;
    return bytes;
  }

  markStale(first: number, count: number): void {
    for (let t = first; t < first + count; t++) {
      const word = t >>> 5;
      const bit = 1 << (t & 31);
      const w = this.stale[word] as number;
      if ((w & bit) === 0) {
        this.stale[word] = w | bit;
        this.staleCount++;
      }
    }
  }

  clearStale(track: number): void {
    const word = track >>> 5;
    const bit = 1 << (track & 31);
    const w = this.stale[word] as number;
    if ((w & bit) !== 0) {
      this.stale[word] = w & ~bit;
      this.staleCount--;
    }
  }

  isStale(track: number): boolean {
    return ((this.stale[track >>> 5] as number) & (1 << (track & 31))) !== 0;
  }

  /** The first stale track at or after `from`, or -1. Skips clean words 32 tracks at a time. */
  nextStale(from: number): number {
    for (let word = from >>> 5; word < this.stale.length; word++) {
      let w = this.stale[word] as number;
      if (w === 0) continue;
      if (word === from >>> 5) w &= ~0 << (from & 31);
      if (w === 0) continue;
      const t = word * 32 + (31 - Math.clz32(w & -w));
      return t < this.trackCount ? t : -1;
    }
    return -1;
  }
}
