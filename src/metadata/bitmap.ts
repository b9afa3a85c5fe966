// The out-of-sync bitmap in memory: one bit per track, authoritative while the
// controller runs. Pages changed since they were last written are tracked in a
// second, page-granular bitset so a flush writes only those.
import { PAGE_SIZE, TRACKS_PER_PAGE } from "./layout.js";

const WORDS_PER_PAGE = PAGE_SIZE / 4;

function popcount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24) & 0xff;
}

export class StaleBitmap {
  readonly pageCount: number;
  private readonly words: Uint32Array;
  private readonly dirty: Uint32Array;
  private staleCount = 0;

  constructor(
    readonly volumeSize: number,
    readonly trackSize: number,
    readonly trackCount: number,
  ) {
    this.pageCount = Math.max(1, Math.ceil(trackCount / TRACKS_PER_PAGE));
    this.words = new Uint32Array(this.pageCount * WORDS_PER_PAGE);
    this.dirty = new Uint32Array(Math.ceil(this.pageCount / 32));
  }

  get outOfSyncTracks(): number {
    return this.staleCount;
  }

  /** Bytes covered by stale tracks (the last track may be short). */
  get outOfSyncBytes(): number {
    let bytes = this.staleCount * this.trackSize;
    const last = this.trackCount - 1;
    if (last >= 0 && this.isStale(last))
      bytes -= this.trackCount * this.trackSize - this.volumeSize;
    return bytes;
  }

  /** Marks [first, first+count) a word at a time. */
  markStale(first: number, count: number): void {
    const end = Math.min(first + count, this.trackCount);
    let t = Math.max(0, first);
    while (t < end) {
      const word = t >>> 5;
      const lo = t & 31;
      const n = Math.min(32 - lo, end - t);
      const mask = n === 32 ? 0xffffffff : ((1 << n) - 1) << lo;
      const w = this.words[word] as number;
      const added = mask & ~w;
      if (added !== 0) {
        this.words[word] = w | added;
        this.staleCount += popcount(added);
        this.setDirty(Math.floor(word / WORDS_PER_PAGE));
      }
      t += n;
    }
  }

  clearStale(track: number): void {
    const word = track >>> 5;
    const bit = 1 << (track & 31);
    const w = this.words[word] as number;
    if ((w & bit) !== 0) {
      this.words[word] = w & ~bit;
      this.staleCount--;
      this.setDirty(Math.floor(word / WORDS_PER_PAGE));
    }
  }

  isStale(track: number): boolean {
    return ((this.words[track >>> 5] as number) & (1 << (track & 31))) !== 0;
  }

  /** The first stale track at or after `from`, or -1. Skips clean words 32 tracks at a time. */
  nextStale(from: number): number {
    const words = this.words;
    const start = Math.max(0, from);
    const first = start >>> 5;
    for (let word = first; word < words.length; word++) {
      let w = words[word] as number;
      if (w === 0) continue;
      if (word === first) w &= ~0 << (start & 31);
      if (w === 0) continue;
      const t = word * 32 + (31 - Math.clz32(w & -w));
      return t < this.trackCount ? t : -1;
    }
    return -1;
  }

  isDirty(page: number): boolean {
    return ((this.dirty[page >>> 5] as number) & (1 << (page & 31))) !== 0;
  }

  setDirty(page: number): void {
    this.dirty[page >>> 5] = (this.dirty[page >>> 5] as number) | (1 << (page & 31));
  }

  /** The next dirty page at or after `from`, or -1. */
  nextDirty(from: number): number {
    for (let p = from; p < this.pageCount; p++) {
      if ((this.dirty[p >>> 5] as number) === 0) {
        p |= 31;
        continue;
      }
      if (this.isDirty(p)) return p;
    }
    return -1;
  }

  /** Copies a page's current bits for writing and counts it clean from now on. */
  takePage(page: number): Buffer {
    this.dirty[page >>> 5] = (this.dirty[page >>> 5] as number) & ~(1 << (page & 31));
    const out = Buffer.allocUnsafe(PAGE_SIZE);
    const base = page * WORDS_PER_PAGE;
    for (let i = 0; i < WORDS_PER_PAGE; i++)
      out.writeUInt32LE(this.words[base + i] as number, i * 4);
    return out;
  }

  /** Loads bits read from the file; padding bits past the last track are ignored. */
  loadPage(page: number, b: Buffer): void {
    const base = page * WORDS_PER_PAGE;
    for (let i = 0; i < WORDS_PER_PAGE; i++) {
      let w = b.readUInt32LE(i * 4);
      const firstTrack = (base + i) * 32;
      if (firstTrack >= this.trackCount) w = 0;
      else if (firstTrack + 32 > this.trackCount) w &= (1 << (this.trackCount - firstTrack)) - 1;
      const old = this.words[base + i] as number;
      this.staleCount += popcount(w) - popcount(old);
      this.words[base + i] = w;
    }
  }

  /** Pages holding the bits of tracks [first, first+count). */
  static pagesOf(first: number, count: number): readonly [number, number] {
    return [Math.floor(first / TRACKS_PER_PAGE), Math.floor((first + count - 1) / TRACKS_PER_PAGE)];
  }
}
