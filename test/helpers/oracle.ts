// The write-order-fidelity oracle: a host workload whose every sector says which
// write put it there, and a checker that decides whether a secondary's image is
// one the host could have seen after a crash (DESIGN.md, "Replication modes and
// guarantees"). Pure: the disk is an interface, the image a Buffer.
//
// The guarantee in the checker's terms: if write B was issued after write A was
// acknowledged (A.ackSeq <= B.acksSeen) and any sector of B is on the image, then
// every sector of A holds A or a write that may have been applied after A (one
// not acknowledged before A was issued). Because acknowledgements only
// accumulate, it is enough to test the newest write present: the image is then
// the state of a crash just after that write was issued.

export const SECTOR = 512;
const MAGIC = 0x5043574f; // "PCWO"
const HEADER = 32;
const ZERO_SECTOR = Buffer.alloc(SECTOR);
const ZERO_CHUNK = Buffer.alloc(128 * SECTOR);

function isZero(image: Buffer, fromSector: number, toSector: number): boolean {
  const end = toSector * SECTOR;
  return image.compare(ZERO_CHUNK, 0, end - fromSector * SECTOR, fromSector * SECTOR, end) === 0;
}

/** One host write as the workload issued it. Ids count from 1 in issue order. */
export interface IssuedWrite {
  readonly id: number;
  /** Device byte offset and length, multiples of SECTOR. */
  readonly offset: number;
  readonly length: number;
  /** Acknowledgements the host had received when it issued this write. */
  readonly acksSeen: number;
  /** Position of this write's acknowledgement in the order the host received them. */
  ackSeq: number | undefined;
  error: string | undefined;
}

export interface Rng {
  /** Uniform in [0, 1). */
  next(): number;
  /** Uniform integer in [lo, hi]. */
  int(lo: number, hi: number): number;
  chance(p: number): boolean;
}

/** mulberry32: small, fast, and the same sequence on every platform for a seed. */
export function createRng(seed: number): Rng {
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    chance: (p) => next() < p,
  };
}

// --- the sector record ---

function fillByte(id: number, index: number, k: number): number {
  return (id * 131 + index * 7 + k) & 0xff;
}

function checksum(sector: Buffer): number {
  let h = 0x811c9dc5; // FNV-1a over the header fields
  for (let i = 0; i < HEADER - 4; i++) h = Math.imul(h ^ (sector[i] as number), 0x01000193);
  return h >>> 0;
}

/** The payload of a write: every sector names the run, the write and its place in it. */
export function encodeWrite(runTag: number, w: Omit<IssuedWrite, "ackSeq" | "error">): Buffer {
  const sectors = w.length / SECTOR;
  const data = Buffer.allocUnsafe(w.length);
  for (let i = 0; i < sectors; i++) {
    const s = data.subarray(i * SECTOR, (i + 1) * SECTOR);
    s.writeUInt32LE(MAGIC, 0);
    s.writeUInt32LE(runTag >>> 0, 4);
    s.writeUInt32LE(w.id, 8);
    s.writeUInt32LE(w.acksSeen, 12);
    s.writeUInt32LE(w.offset / SECTOR, 16);
    s.writeUInt32LE(sectors, 20);
    s.writeUInt32LE(i, 24);
    s.writeUInt32LE(checksum(s), 28);
    for (let k = HEADER; k < SECTOR; k++) s[k] = fillByte(w.id, i, k);
  }
  return data;
}

export type SectorContent =
  | { readonly kind: "zero" }
  | {
      readonly kind: "record";
      readonly runTag: number;
      readonly id: number;
      readonly acksSeen: number;
      readonly firstSector: number;
      readonly sectors: number;
      readonly index: number;
    }
  | { readonly kind: "garbage"; readonly why: string };

export function decodeSector(sector: Buffer): SectorContent {
  if (sector.equals(ZERO_SECTOR)) return { kind: "zero" };
  if (sector.readUInt32LE(0) !== MAGIC) return { kind: "garbage", why: "no record magic" };
  if (sector.readUInt32LE(28) !== checksum(sector))
    return { kind: "garbage", why: "record header checksum mismatch" };
  const id = sector.readUInt32LE(8);
  const index = sector.readUInt32LE(24);
  for (let k = HEADER; k < SECTOR; k++) {
    if (sector[k] !== fillByte(id, index, k))
      return { kind: "garbage", why: `torn sector: record of write #${id} with foreign bytes` };
  }
  return {
    kind: "record",
    runTag: sector.readUInt32LE(4),
    id,
    acksSeen: sector.readUInt32LE(12),
    firstSector: sector.readUInt32LE(16),
    sectors: sector.readUInt32LE(20),
    index,
  };
}

// --- the host workload ---

export interface HostDisk {
  write(data: Buffer, offset: number): Promise<void>;
}

export interface WorkloadOptions {
  readonly seed: number;
  readonly runTag: number;
  /** The writes land in [regionOffset, regionOffset + regionSize), sector aligned. */
  readonly regionOffset: number;
  readonly regionSize: number;
  /** Large writes are sized in tracks so that many of them span several. */
  readonly trackSize: number;
  readonly maxSectors?: number;
  readonly maxQueueDepth?: number;
  readonly maxWrites?: number;
  /** Let a write overlap one still in flight (the checker then allows either order). */
  readonly overlapInFlight?: boolean;
}

const QUEUE_DEPTHS = [1, 1, 2, 4, 8, 16, 16];

/**
 * Issues writes from a seeded plan with a varying number in flight: phases at
 * depth 1 build strict chains (each write issued right after the previous was
 * acknowledged), deeper phases mix concurrency in. A write issued from the
 * completion of another depends on it, which is the case the oracle is about.
 */
export class HostWorkload {
  private readonly log: IssuedWrite[] = [];
  private readonly rng: Rng;
  private readonly inFlightSet = new Set<IssuedWrite>();
  private ackCount = 0;
  private issuing = false;
  private depth = 1;
  private phaseLeft = 0;
  private issueWaiters: { count: number; resolve: () => void }[] = [];
  private settleWaiters: (() => void)[] = [];
  private readonly maxSectors: number;
  private readonly maxDepth: number;
  private readonly maxWrites: number;

  constructor(
    private readonly options: WorkloadOptions,
    private readonly disk: HostDisk,
  ) {
    if (options.regionOffset % SECTOR !== 0 || options.regionSize % SECTOR !== 0)
      throw new Error("the workload region must be sector aligned");
    this.rng = createRng(options.seed);
    this.maxSectors = Math.min(options.maxSectors ?? 512, options.regionSize / SECTOR);
    this.maxDepth = options.maxQueueDepth ?? 16;
    this.maxWrites = options.maxWrites ?? 5000;
  }

  get writes(): readonly IssuedWrite[] {
    return this.log;
  }

  get acks(): number {
    return this.ackCount;
  }

  get inFlight(): number {
    return this.inFlightSet.size;
  }

  start(): void {
    this.issuing = true;
    this.pump();
  }

  /** Resolves once `count` writes were issued, or issuing stopped first. */
  whenIssued(count: number): Promise<void> {
    if (!this.issuing || this.log.length >= count) return Promise.resolve();
    return new Promise((resolve) => this.issueWaiters.push({ count, resolve }));
  }

  /** Issue nothing more; returns the acknowledgements received so far. */
  stopIssuing(): number {
    this.issuing = false;
    this.wakeIssueWaiters(true);
    return this.ackCount;
  }

  /** Resolves when no write is in flight. */
  settled(): Promise<void> {
    if (this.inFlightSet.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.settleWaiters.push(resolve));
  }

  private pump(): void {
    while (this.issuing && this.log.length < this.maxWrites) {
      if (this.phaseLeft-- <= 0) {
        const depth = QUEUE_DEPTHS[this.rng.int(0, QUEUE_DEPTHS.length - 1)] as number;
        this.depth = Math.min(depth, this.maxDepth);
        this.phaseLeft = this.rng.int(5, 40);
      }
      if (this.inFlightSet.size >= this.depth) return;
      const place = this.place();
      if (place === undefined) return; // every try overlapped a write in flight: wait
      this.issue(place[0], place[1]);
    }
    if (this.log.length >= this.maxWrites) this.stopIssuing();
  }

  private place(): [number, number] | undefined {
    const { regionOffset, regionSize, trackSize } = this.options;
    const regionSectors = regionSize / SECTOR;
    for (let attempt = 0; attempt < 8; attempt++) {
      // Two thirds small writes (often inside one track), one third up to several tracks.
      const sectors = this.rng.chance(0.66)
        ? this.rng.int(1, Math.min(this.maxSectors, 16))
        : this.rng.int(1, Math.min(this.maxSectors, (4 * trackSize) / SECTOR));
      const first = this.rng.int(0, regionSectors - sectors);
      const offset = regionOffset + first * SECTOR;
      const length = sectors * SECTOR;
      if (this.options.overlapInFlight === true || !this.overlapsInFlight(offset, length))
        return [offset, length];
    }
    return undefined; // only possible with writes in flight: their completions pump again
  }

  private overlapsInFlight(offset: number, length: number): boolean {
    for (const w of this.inFlightSet) {
      if (w.offset < offset + length && offset < w.offset + w.length) return true;
    }
    return false;
  }

  private issue(offset: number, length: number): void {
    const w: IssuedWrite = {
      id: this.log.length + 1,
      offset,
      length,
      acksSeen: this.ackCount,
      ackSeq: undefined,
      error: undefined,
    };
    this.log.push(w);
    this.inFlightSet.add(w);
    this.disk.write(encodeWrite(this.options.runTag, w), offset).then(
      () => this.completed(w, undefined),
      (err: unknown) => this.completed(w, err instanceof Error ? err.message : String(err)),
    );
    this.wakeIssueWaiters(false);
  }

  private completed(w: IssuedWrite, error: string | undefined): void {
    this.inFlightSet.delete(w);
    if (error === undefined) w.ackSeq = ++this.ackCount;
    else {
      w.error = error;
      this.stopIssuing(); // the device is gone or failing: a host stops here too
    }
    this.pump();
    if (this.inFlightSet.size === 0) {
      const waiters = this.settleWaiters;
      this.settleWaiters = [];
      for (const resolve of waiters) resolve();
    }
  }

  private wakeIssueWaiters(all: boolean): void {
    this.issueWaiters = this.issueWaiters.filter((w) => {
      if (!all && this.log.length < w.count) return true;
      w.resolve();
      return false;
    });
  }
}

// --- the checker ---

export interface CheckInput {
  readonly runTag: number;
  readonly writes: readonly IssuedWrite[];
  /** The secondary's image from device offset 0. */
  readonly image: Buffer;
  readonly trackSize: number;
  /**
   * Acknowledgements the host had received when the link was cut (sync mode):
   * every one of those writes must be on the image.
   */
  readonly acksAtCut?: number;
  /**
   * The secondary applied a prefix of the replication stream, so each write's
   * tracks must be there whole and in sequence order (track i ⇒ tracks < i).
   */
  readonly trackOrder?: boolean;
}

export const ViolationKind = {
  /** B is on the image without A, although A was acknowledged before B was issued. */
  ORDER: "order",
  /** Sync mode: a write acknowledged before the cut is not on the image. */
  LOST_ACK: "lost-ack",
  /** A write's tracks are not a whole prefix of its subtasks. */
  TRACK_ORDER: "track-order",
  /** A sector holds something no write of this run put there. */
  CORRUPT: "corrupt",
} as const;
export type ViolationKind = (typeof ViolationKind)[keyof typeof ViolationKind];

export interface Violation {
  readonly kind: ViolationKind;
  readonly message: string;
  /** The write that is missing (order, lost-ack) or out of order (track-order). */
  readonly earlier?: number;
  /** The write whose presence requires `earlier` (order). */
  readonly later?: number;
  /** Device byte offset of the first offending sector. */
  readonly offset?: number;
}

export interface OracleReport {
  readonly issued: number;
  readonly acked: number;
  /** Writes with at least one sector on the image. */
  readonly present: number;
  /** Present writes none of whose sectors lost to an earlier state. */
  readonly whole: number;
  /** Present writes spanning more than one track. */
  readonly multiTrackPresent: number;
  /** The newest write present (0: none): the crash point the image stands for. */
  readonly newestPresent: number;
  /** Writes acknowledged before the newest present one was issued: all must be whole. */
  readonly required: number;
  /** Acknowledged writes not whole on the image: in async mode, the lag. */
  readonly ackedNotWhole: number;
  readonly violations: readonly Violation[];
  readonly violationCount: number;
}

const MAX_LISTED = 20;

function span(w: IssuedWrite): string {
  return `#${w.id} [${w.offset}, +${w.length})`;
}

/** Decides whether `input.image` is a state the host could have seen after a crash. */
export function checkWriteOrder(input: CheckInput): OracleReport {
  const { writes, image, trackSize } = input;
  const byId = new Map<number, IssuedWrite>();
  let lastSeen = 0;
  for (const w of writes) {
    if (w.id !== byId.size + 1) throw new Error(`write ids must run 1, 2, 3 … (got #${w.id})`);
    if (w.acksSeen < lastSeen) throw new Error(`#${w.id}: acksSeen went backwards`);
    lastSeen = w.acksSeen;
    byId.set(w.id, w);
  }
  const violations: Violation[] = [];
  let violationCount = 0;
  const report = (v: Violation): void => {
    violationCount++;
    if (violations.length < MAX_LISTED) violations.push(v);
  };

  // Who holds each sector: 0 nobody (zeros), -1 something unaccounted for.
  const holder = new Int32Array(Math.floor(image.length / SECTOR));
  for (let s = 0; s < holder.length; s++) {
    // Most of a sparse image is zeros: skip it a chunk at a time.
    const chunkEnd = Math.min(holder.length, s + ZERO_CHUNK.length / SECTOR);
    if (s % (ZERO_CHUNK.length / SECTOR) === 0 && isZero(image, s, chunkEnd)) {
      s = chunkEnd - 1;
      continue;
    }
    const c = decodeSector(image.subarray(s * SECTOR, (s + 1) * SECTOR));
    if (c.kind === "zero") continue;
    const w = c.kind === "record" ? byId.get(c.id) : undefined;
    const why =
      c.kind === "garbage"
        ? c.why
        : c.runTag !== input.runTag >>> 0
          ? `record of another run (tag ${c.runTag})`
          : w === undefined
            ? `record of write #${c.id}, never issued`
            : c.firstSector !== w.offset / SECTOR ||
                c.sectors !== w.length / SECTOR ||
                c.index !== s - c.firstSector ||
                c.acksSeen !== w.acksSeen
              ? `record of write #${c.id} in the wrong place or with the wrong header`
              : undefined;
    if (why === undefined) {
      holder[s] = c.kind === "record" ? c.id : 0;
      continue;
    }
    holder[s] = -1;
    report({ kind: ViolationKind.CORRUPT, message: `${s * SECTOR}: ${why}`, offset: s * SECTOR });
  }

  const ackedBefore = (h: IssuedWrite, a: IssuedWrite): boolean =>
    h.ackSeq !== undefined && h.ackSeq <= a.acksSeen;
  /** May sector s, inside write a, hold what it holds if a was applied? */
  const fits = (a: IssuedWrite, s: number): boolean => {
    const h = holder[s] ?? -1;
    if (h === a.id) return true;
    const hw = h > 0 ? byId.get(h) : undefined;
    return hw !== undefined && !ackedBefore(hw, a);
  };
  const describeHolder = (s: number): string => {
    const h = holder[s] ?? -1;
    if (h === 0) return "zeros";
    if (h < 0) return "corrupt data";
    const hw = byId.get(h) as IssuedWrite;
    return `write ${span(hw)}, acknowledged #${hw.ackSeq ?? "never"}`;
  };
  const inImage = (w: IssuedWrite): boolean => (w.offset + w.length) / SECTOR <= holder.length;

  const presentIds: number[] = [];
  const firstMisfit = new Map<number, number>();
  let whole = 0;
  let multiTrackPresent = 0;
  for (const w of writes) {
    if (!inImage(w)) throw new Error(`write ${span(w)} lies beyond the image`);
    const first = w.offset / SECTOR;
    let present = false;
    let misfit = -1;
    for (let s = first; s < first + w.length / SECTOR; s++) {
      if (holder[s] === w.id) present = true;
      else if (misfit < 0 && !fits(w, s)) misfit = s;
    }
    if (misfit >= 0) firstMisfit.set(w.id, misfit);
    if (!present) continue;
    presentIds.push(w.id);
    if (misfit < 0) whole++;
    const tracks =
      Math.floor((w.offset + w.length - 1) / trackSize) - Math.floor(w.offset / trackSize) + 1;
    if (tracks > 1) multiTrackPresent++;
    if (input.trackOrder === true) checkTracks(w);
  }

  function checkTracks(w: IssuedWrite): void {
    let gap: number | undefined;
    for (let t0 = w.offset; t0 < w.offset + w.length;) {
      const t1 = Math.min(w.offset + w.length, (Math.floor(t0 / trackSize) + 1) * trackSize);
      let has = false;
      let misfit: number | undefined;
      for (let s = t0 / SECTOR; s < t1 / SECTOR; s++) {
        if (holder[s] === w.id) has = true;
        else if (misfit === undefined && !fits(w, s)) misfit = s;
      }
      if (has && misfit !== undefined) {
        report({
          kind: ViolationKind.TRACK_ORDER,
          message: `write ${span(w)}: the subtask for [${t0}, ${t1}) is torn: ${misfit * SECTOR} holds ${describeHolder(misfit)}`,
          earlier: w.id,
          offset: misfit * SECTOR,
        });
      } else if (has && gap !== undefined) {
        report({
          kind: ViolationKind.TRACK_ORDER,
          message: `write ${span(w)}: its subtask at ${t0} is on the image but an earlier one is not (${gap} holds ${describeHolder(gap / SECTOR)})`,
          earlier: w.id,
          offset: gap,
        });
      }
      if (!has && misfit !== undefined) gap ??= misfit * SECTOR;
      t0 = t1;
    }
  }

  const newest = presentIds.length === 0 ? undefined : byId.get(presentIds.at(-1) as number);
  let required = 0;
  let ackedNotWhole = 0;
  for (const a of writes) {
    const misfit = firstMisfit.get(a.id);
    if (a.ackSeq === undefined) continue;
    const isRequired = newest !== undefined && a.ackSeq <= newest.acksSeen;
    if (isRequired) required++;
    if (misfit === undefined) continue;
    ackedNotWhole++;
    if (isRequired) {
      // The first present write issued after a's acknowledgement: acksSeen only grows.
      let lo = 0;
      let hi = presentIds.length - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if ((byId.get(presentIds[mid] as number) as IssuedWrite).acksSeen >= a.ackSeq) hi = mid;
        else lo = mid + 1;
      }
      const b = byId.get(presentIds[lo] as number) as IssuedWrite;
      report({
        kind: ViolationKind.ORDER,
        message: `write ${span(b)} is on the image, issued after ${b.acksSeen} acknowledgements, but write ${span(a)}, acknowledged #${a.ackSeq}, is not whole: ${misfit * SECTOR} holds ${describeHolder(misfit)}`,
        earlier: a.id,
        later: b.id,
        offset: misfit * SECTOR,
      });
    }
    if (input.acksAtCut !== undefined && a.ackSeq <= input.acksAtCut) {
      report({
        kind: ViolationKind.LOST_ACK,
        message: `write ${span(a)} was acknowledged (#${a.ackSeq}) before the cut but is not whole: ${misfit * SECTOR} holds ${describeHolder(misfit)}`,
        earlier: a.id,
        offset: misfit * SECTOR,
      });
    }
  }

  return {
    issued: writes.length,
    acked: writes.filter((w) => w.ackSeq !== undefined).length,
    present: presentIds.length,
    whole,
    multiTrackPresent,
    newestPresent: newest?.id ?? 0,
    required,
    ackedNotWhole,
    violations,
    violationCount,
  };
}

/** One paragraph for an assertion message or a log line. */
export function describeReport(r: OracleReport): string {
  const head =
    `${r.issued} writes issued, ${r.acked} acknowledged; on the image: ${r.present} ` +
    `(${r.whole} whole, ${r.multiTrackPresent} multi-track), newest #${r.newestPresent}, ` +
    `${r.required} required whole, ${r.ackedNotWhole} acknowledged not whole; ` +
    `${r.violationCount} violation(s)`;
  const more =
    r.violationCount > r.violations.length
      ? `\n  … and ${r.violationCount - r.violations.length} more`
      : "";
  return [head, ...r.violations.map((v) => `  ${v.kind}: ${v.message}`)].join("\n") + more;
}
