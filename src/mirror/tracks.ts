// Per-track replication state of the primary. Two facts per track:
//  - pending: writes to the track that the secondary has not acknowledged yet
//    (the write-intent part: set before the local write, cleared lazily when the
//    last of them is acknowledged);
//  - out of sync: the secondary may hold stale data for the whole track, so only
//    a full copy of the track (resync) clears it.

export class TrackState {
  readonly trackCount: number;
  private readonly pending: Uint32Array;
  private readonly stale: Uint32Array;
  private staleCount = 0;
  private pendingTracks = 0;

  constructor(
    readonly volumeSize: number,
    readonly trackSize: number,
  ) {
    this.trackCount = Math.ceil(volumeSize / trackSize);
    this.pending = new Uint32Array(this.trackCount);
    this.stale = new Uint32Array(Math.ceil(this.trackCount / 32));
  }

  /** Tracks the secondary may not have: stale ones plus ones with writes in flight. */
  get outOfSyncTracks(): number {
    return this.staleCount;
  }

  get pendingTrackCount(): number {
    return this.pendingTracks;
  }

  /** Bytes covered by stale tracks (the last track may be short). */
  get outOfSyncBytes(): number {
    let bytes = this.staleCount * this.trackSize;
    const last = this.trackCount - 1;
    if (last >= 0 && this.isStale(last))
      bytes -= this.trackCount * this.trackSize - this.volumeSize;
    return bytes;
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
    if (abandoned) this.markStale(track, 1);
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
