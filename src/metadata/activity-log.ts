// The activity log (DRBD's AL): the set of volume extents in which writes may
// be in flight. A write may reach the volume only once its extents are listed
// in a durable AL transaction, so after a crash the bitmap plus the tracks of
// every logged extent cover every write the peer may have missed. Extents stay
// hot after their writes end, so repeated writes to a region pay no metadata I/O.
//
// State lives in typed arrays indexed by AL slot; the LRU order is an intrusive
// doubly linked list over those slots, so the hot path (every extent hot and
// durable) is a few array reads and writes and allocates nothing.
import { StaleBitmap } from "./bitmap.js";
import type { Geometry } from "./layout.js";

/** The I/O the log needs; the store runs jobs one at a time in order. */
export interface AlSink {
  schedule(job: () => Promise<void>): void;
  /** Writes those of `pages` that changed since last written, then syncs. */
  writeBitmapPages(pages: readonly number[]): Promise<void>;
  /** Writes one transaction listing `extents` into the older AL slot, then syncs. */
  writeTransaction(extents: readonly number[]): Promise<void>;
}

interface Batch {
  readonly no: number;
  readonly promise: Promise<void>;
  resolve: () => void;
  reject: (err: unknown) => void;
}

interface Waiter {
  readonly e0: number;
  readonly e1: number;
  readonly resolve: (p: Promise<void> | undefined) => void;
  readonly reject: (err: unknown) => void;
}

const PENDING = 1;
const DURABLE = 2;

function newBatch(no: number): Batch {
  let resolve: () => void = () => {};
  let reject: (err: unknown) => void = () => {};
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Every batch promise is handed to a caller; this only keeps a batch whose
  // callers all went away from becoming an unhandled rejection.
  promise.catch(() => {});
  return { no, promise, resolve, reject };
}

export class ActivityLog {
  private readonly tpe: number;
  private readonly cap: number;
  private readonly slotOf: Int32Array;
  /** Writes begun and not ended, per extent; an extent with refs is never evicted. */
  private readonly refs: Uint32Array;
  private readonly slotExtent: Int32Array;
  private readonly slotState: Uint8Array;
  private readonly slotBatch: Float64Array;
  private readonly prev: Int32Array;
  private readonly next: Int32Array;
  private head = -1; // most recently used
  private tail = -1;
  private readonly free: Int32Array;
  private freeCount: number;
  private readonly evictedPages = new Set<number>();
  private nextNo = 1;
  private committing: Batch | undefined;
  private upcoming: Batch | undefined;
  private scheduled = false;
  private readonly queue: Waiter[] = [];
  private failure: Error | undefined;

  constructor(
    private readonly g: Geometry,
    private readonly sink: AlSink,
  ) {
    this.tpe = g.tracksPerExtent;
    this.cap = g.alExtents;
    this.slotOf = new Int32Array(g.extentCount).fill(-1);
    this.refs = new Uint32Array(g.extentCount);
    this.slotExtent = new Int32Array(this.cap).fill(-1);
    this.slotState = new Uint8Array(this.cap);
    this.slotBatch = new Float64Array(this.cap);
    this.prev = new Int32Array(this.cap).fill(-1);
    this.next = new Int32Array(this.cap).fill(-1);
    this.free = new Int32Array(this.cap);
    for (let s = 0; s < this.cap; s++) this.free[s] = this.cap - 1 - s;
    this.freeCount = this.cap;
  }

  /** Extents currently listed or about to be (for tests and status). */
  get hotExtents(): number {
    return this.cap - this.freeCount;
  }

  beginWrite(first: number, count: number): Promise<void> | undefined {
    if (count <= 0) return undefined;
    if (first < 0 || first + count > this.g.trackCount)
      throw new RangeError(`tracks ${first}+${count} beyond the ${this.g.trackCount}-track volume`);
    const e0 = Math.floor(first / this.tpe);
    const e1 = Math.floor((first + count - 1) / this.tpe);
    // Writes to logged extents never wait, not even behind queued misses: they
    // take no slot, and they cannot keep the queue waiting forever unless every
    // extent is always in use.
    let e = e0;
    for (; e <= e1; e++) {
      const s = this.slotOf[e] as number;
      if (s < 0 || this.slotState[s] !== DURABLE) break;
    }
    if (e > e1) {
      for (e = e0; e <= e1; e++) {
        this.refs[e] = (this.refs[e] as number) + 1;
        this.touch(this.slotOf[e] as number);
      }
      return undefined;
    }
    return this.slowBegin(e0, e1);
  }

  /** Callers call it once per beginWrite, after its promise settled (either way). */
  endWrite(first: number, count: number): void {
    if (count <= 0) return;
    const e0 = Math.floor(first / this.tpe);
    const e1 = Math.floor((first + count - 1) / this.tpe);
    let freed = false;
    for (let e = e0; e <= e1; e++) {
      const r = this.refs[e] ?? 0;
      if (r === 0) throw new Error(`endWrite of tracks ${first}+${count} without a beginWrite`);
      this.refs[e] = r - 1;
      if (r === 1) freed = true;
    }
    if (freed && this.queue.length > 0) this.admitQueued();
  }

  /** Extents with writes not ended, in ascending order. */
  referencedExtents(): number[] {
    const out: number[] = [];
    for (let e = 0; e < this.refs.length; e++) if ((this.refs[e] as number) > 0) out.push(e);
    return out;
  }

  private slowBegin(e0: number, e1: number): Promise<void> | undefined {
    if (e1 - e0 + 1 > this.cap)
      throw new RangeError(
        `a write over ${e1 - e0 + 1} extents exceeds the ${this.cap}-extent activity log`,
      );
    if (this.failure !== undefined) {
      this.holdRefs(e0, e1);
      return Promise.reject(this.failure);
    }
    if (this.queue.length === 0 && this.admit(e0, e1)) return this.promiseFor(e0, e1);
    // Waiting requests hold no references, so they never pin slots others wait for.
    return new Promise<Promise<void> | undefined>((resolve, reject) => {
      this.queue.push({ e0, e1, resolve, reject });
    }).then((p) => p);
  }

  private holdRefs(e0: number, e1: number): void {
    for (let e = e0; e <= e1; e++) this.refs[e] = (this.refs[e] as number) + 1;
  }

  /** Takes references and slots for every extent of the request, or nothing. */
  private admit(e0: number, e1: number): boolean {
    this.holdRefs(e0, e1);
    let missing = 0;
    for (let e = e0; e <= e1; e++) if ((this.slotOf[e] as number) < 0) missing++;
    if (missing > this.freeCount) {
      let avail = this.freeCount;
      for (let s = this.tail; s >= 0 && avail < missing; s = this.prev[s] as number)
        if (this.refs[this.slotExtent[s] as number] === 0) avail++;
      if (avail < missing) {
        for (let e = e0; e <= e1; e++) this.refs[e] = (this.refs[e] as number) - 1;
        return false;
      }
    }
    for (let e = e0; e <= e1; e++) {
      let s = this.slotOf[e] as number;
      if (s < 0) {
        s = this.freeCount > 0 ? (this.free[--this.freeCount] as number) : this.evict();
        this.slotExtent[s] = e;
        this.slotOf[e] = s;
        this.slotState[s] = PENDING;
        this.slotBatch[s] = this.nextNo;
        this.linkHead(s);
      } else this.touch(s);
    }
    return true;
  }

  /** Frees the least recently used slot without references. Its bitmap pages are
   * written before the transaction that no longer lists it. */
  private evict(): number {
    let s = this.tail;
    while (s >= 0 && this.refs[this.slotExtent[s] as number] !== 0) s = this.prev[s] as number;
    if (s < 0) throw new Error("activity log: no extent to evict"); // admit() counted one
    this.unlink(s);
    const e = this.slotExtent[s] as number;
    this.slotOf[e] = -1;
    this.slotExtent[s] = -1;
    this.slotState[s] = 0;
    const first = e * this.tpe;
    const count = Math.min(this.tpe, this.g.trackCount - first);
    const [p0, p1] = StaleBitmap.pagesOf(first, count);
    for (let p = p0; p <= p1; p++) this.evictedPages.add(p);
    return s;
  }

  private promiseFor(e0: number, e1: number): Promise<void> | undefined {
    let need = 0;
    for (let e = e0; e <= e1; e++) {
      const s = this.slotOf[e] as number;
      if (this.slotState[s] === PENDING) need = Math.max(need, this.slotBatch[s] as number);
    }
    if (need === 0) return undefined;
    if (this.committing !== undefined && need === this.committing.no)
      return this.committing.promise;
    this.upcoming ??= newBatch(this.nextNo);
    if (!this.scheduled) {
      this.scheduled = true;
      this.sink.schedule(() => this.commit());
    }
    return this.upcoming.promise;
  }

  private admitQueued(): void {
    for (let w = this.queue[0]; w !== undefined; w = this.queue[0]) {
      if (!this.admit(w.e0, w.e1)) return;
      this.queue.shift();
      w.resolve(this.promiseFor(w.e0, w.e1));
    }
  }

  /** One AL transaction: everything that became hot while the previous one was written. */
  private async commit(): Promise<void> {
    this.scheduled = false;
    const batch = this.upcoming;
    if (batch === undefined) return;
    this.upcoming = undefined;
    this.nextNo++;
    this.committing = batch;
    // Extents evicted from here on are still listed in this transaction; their
    // pages go out before the next one.
    const extents: number[] = [];
    for (let s = 0; s < this.cap; s++)
      if ((this.slotExtent[s] as number) >= 0) extents.push(this.slotExtent[s] as number);
    extents.sort((a, b) => a - b);
    const pages = [...this.evictedPages].sort((a, b) => a - b);
    this.evictedPages.clear();
    try {
      await this.sink.writeBitmapPages(pages);
      await this.sink.writeTransaction(extents);
    } catch (err) {
      for (const p of pages) this.evictedPages.add(p);
      this.fail(err);
      return;
    }
    for (let s = 0; s < this.cap; s++)
      if (this.slotState[s] === PENDING && (this.slotBatch[s] as number) <= batch.no)
        this.slotState[s] = DURABLE;
    this.committing = undefined;
    batch.resolve();
  }

  /** After a failed transaction no new extent becomes hot; writes to hot ones go on. */
  private fail(err: unknown): void {
    this.failure = err instanceof Error ? err : new Error(String(err));
    this.committing?.reject(err);
    this.upcoming?.reject(err);
    this.committing = undefined;
    this.upcoming = undefined;
    for (const w of this.queue.splice(0)) {
      this.holdRefs(w.e0, w.e1);
      w.reject(err);
    }
  }

  private touch(s: number): void {
    if (this.head === s) return;
    this.unlink(s);
    this.linkHead(s);
  }

  private linkHead(s: number): void {
    this.prev[s] = -1;
    this.next[s] = this.head;
    if (this.head >= 0) this.prev[this.head] = s;
    this.head = s;
    if (this.tail < 0) this.tail = s;
  }

  private unlink(s: number): void {
    const p = this.prev[s] as number;
    const n = this.next[s] as number;
    if (p >= 0) this.next[p] = n;
    else if (this.head === s) this.head = n;
    if (n >= 0) this.prev[n] = p;
    else if (this.tail === s) this.tail = p;
    this.prev[s] = -1;
    this.next[s] = -1;
  }
}
