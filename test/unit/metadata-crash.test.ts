// Crash safety of the metadata: a randomized run of write intents, marks,
// clears and flushes is cut short at every single I/O step (each write and each
// sync), with the write under way torn and the unsynced writes before it kept
// in every way a page cache may keep them. Reopening what survives must work,
// and must never count fewer tracks out of sync than the mirror relied on.
//
// The invariant (the oracle below): at the moment of the crash, a track t must
// be out of sync after recovery if
//   (1) a write covering t has been allowed to proceed (beginWrite returned
//       undefined or its promise resolved) and has not been ended: it may have
//       reached the volume but not the peer; or
//   (2) t is marked in memory (not cleared since) and the mark is durable by
//       contract: it was made while a write of (1) covered t (the mirror marks
//       a failed write and then ends it; the activity log covers the mark until
//       eviction writes the bitmap), or a flushBitmap called after the mark
//       has resolved.
// Marks not covered by (2), and clears, may or may not survive: over-marking
// is allowed, it only costs a copy.
import { fc, test } from "@fast-check/vitest";
import { expect } from "vitest";
import {
  FileMetadata,
  MemoryMetaIo,
  MetaFlag,
  MetaRole,
  formatMetadata,
} from "../../src/metadata/index.js";
import { geometry } from "../../src/metadata/layout.js";

const TRACK = 512;
const TRACKS = 70_000; // three bitmap pages
const g = geometry(TRACKS * TRACK, TRACK, 4 * TRACK, 3); // 4 tracks per extent, 3 in the log
/** Extents the run touches: neighbours, and ones on other bitmap pages. */
const EXTENTS = [0, 1, 2, 3, 8192, 8193, 16384, 17499];

type Op =
  | { kind: "begin"; extent: number; off: number; count: number }
  | { kind: "ack" | "fail"; pick: number }
  | { kind: "mark"; extent: number; off: number; count: number }
  | { kind: "clear"; extent: number; off: number }
  | { kind: "flush" }
  | { kind: "tick"; n: number };

const place = { extent: fc.constantFrom(...EXTENTS), off: fc.nat(7) };
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant("begin" as const),
      ...place,
      count: fc.integer({ min: 1, max: 5 }),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constantFrom("ack" as const, "fail" as const),
      pick: fc.nat(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("mark" as const),
      ...place,
      count: fc.integer({ min: 1, max: 8 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("clear" as const), ...place }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("flush" as const) }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("tick" as const),
      n: fc.integer({ min: 1, max: 12 }),
    }),
  },
);

interface Write {
  readonly first: number;
  readonly count: number;
  durable: boolean;
}

/** What the mirror may rely on; see the invariant at the top. */
class Model {
  now = 0;
  readonly active: Write[] = [];
  private readonly since = new Map<number, number>();
  private readonly protectedMarks = new Set<number>();
  flushedBefore = -1;

  covered(t: number): boolean {
    return this.active.some((w) => w.durable && t >= w.first && t < w.first + w.count);
  }
  mark(first: number, count: number): void {
    for (let t = first; t < first + count; t++) {
      if (!this.since.has(t)) this.since.set(t, this.now);
      if (this.covered(t)) this.protectedMarks.add(t);
    }
  }
  clear(t: number): void {
    this.since.delete(t);
    this.protectedMarks.delete(t);
  }
  stale(): Set<number> {
    return new Set(this.since.keys());
  }
  required(): Set<number> {
    const out = new Set<number>();
    for (const w of this.active)
      if (w.durable) for (let t = w.first; t < w.first + w.count; t++) out.add(t);
    for (const [t, since] of this.since)
      if (this.protectedMarks.has(t) || since < this.flushedBefore) out.add(t);
    return out;
  }
}

class Crash extends Error {}

interface Cut {
  /** The I/O step at which the process dies; Infinity: it does not. */
  readonly at: number;
  readonly tornFraction: number;
  readonly keep: (i: number) => boolean;
}

interface Outcome {
  readonly steps: number;
  readonly survivor: Buffer;
  /** The model's required set when the crash hit, or at the end. */
  readonly required: Set<number>;
  readonly crashed: boolean;
  /** Without a crash: the marks in memory and the extents still referenced at close. */
  readonly stale: Set<number>;
  readonly referenced: Set<number>;
}

function freshImage(): Promise<Buffer> {
  const io = new MemoryMetaIo();
  return formatMetadata(io, g, {
    volumeSize: g.volumeSize,
    trackSize: TRACK,
    extentSize: g.extentSize,
    alExtents: g.alExtents,
    role: MetaRole.PRIMARY,
    flags: MetaFlag.CLEAN | MetaFlag.FRESH,
    pairId: "",
    generations: { current: 1n, bitmap: 0n, history: [0n, 0n] },
  }).then(() => io.image());
}

async function run(image: Buffer, ops: readonly Op[], cut: Cut): Promise<Outcome> {
  const io = new MemoryMetaIo(image);
  const model = new Model();
  let crash: { survivor: Buffer; required: Set<number> } | undefined;
  io.before = (op, step, data) => {
    if (crash !== undefined) throw new Crash("already crashed");
    if (step < cut.at) return;
    const torn =
      op.kind === "write" && data !== undefined
        ? { offset: op.offset, data, bytes: Math.floor(cut.tornFraction * op.length) }
        : undefined;
    crash = { survivor: io.survivor(cut.keep, torn), required: model.required() };
    throw new Crash(`crash at step ${step}`);
  };
  const ignore = (): void => {};
  const alive = (): boolean => crash === undefined;
  let m: FileMetadata;
  try {
    m = await FileMetadata.load(io, "crash.pcmeta", { volumeSize: g.volumeSize, trackSize: TRACK });
  } catch (err) {
    if (!(err instanceof Crash) && crash === undefined) throw err;
    return finish();
  }
  for (const op of ops) {
    if (!alive()) break;
    model.now++;
    switch (op.kind) {
      case "begin": {
        const first = op.extent * 4 + op.off;
        const count = Math.min(op.count, TRACKS - first);
        const w: Write = { first, count, durable: false };
        model.active.push(w);
        const p = m.beginWrite(first, count);
        if (p === undefined) w.durable = true;
        else
          p.then(() => {
            if (alive()) w.durable = true;
          }, ignore);
        break;
      }
      case "ack":
      case "fail": {
        const ready = model.active.filter((w) => w.durable);
        const w = ready[op.pick % Math.max(1, ready.length)];
        if (w === undefined) break;
        if (op.kind === "fail") {
          model.mark(w.first, w.count);
          m.markStale(w.first, w.count);
        }
        model.active.splice(model.active.indexOf(w), 1);
        m.endWrite(w.first, w.count);
        break;
      }
      case "mark": {
        const first = op.extent * 4 + op.off;
        const count = Math.min(op.count, TRACKS - first);
        model.mark(first, count);
        m.markStale(first, count);
        break;
      }
      case "clear": {
        const t = Math.min(op.extent * 4 + op.off, TRACKS - 1);
        model.clear(t);
        m.clearStale(t);
        break;
      }
      case "flush": {
        const start = model.now;
        m.flushBitmap().then(() => {
          if (alive()) model.flushedBefore = Math.max(model.flushedBefore, start);
        }, ignore);
        break;
      }
      case "tick":
        for (let i = 0; i < op.n; i++) await Promise.resolve();
        break;
    }
  }
  for (let i = 0; i < 50 && alive(); i++) await Promise.resolve();
  if (alive()) {
    const stale = model.stale();
    const referenced = new Set<number>();
    for (const w of model.active)
      for (let e = Math.floor(w.first / 4); e <= Math.floor((w.first + w.count - 1) / 4); e++)
        referenced.add(e);
    const required = model.required();
    await m.close().catch(ignore);
    if (alive())
      return {
        steps: io.ops.length,
        survivor: io.image(),
        required,
        crashed: false,
        stale,
        referenced,
      };
  }
  return finish();

  function finish(): Outcome {
    if (crash === undefined) throw new Error("run ended without crash or close");
    const empty = new Set<number>();
    return { steps: io.ops.length, ...crash, crashed: true, stale: empty, referenced: empty };
  }
}

async function recover(image: Buffer): Promise<{ m: FileMetadata; tracks: Set<number> }> {
  const m = await FileMetadata.load(new MemoryMetaIo(image), "crash.pcmeta", {
    volumeSize: g.volumeSize,
    trackSize: TRACK,
  });
  const tracks = new Set<number>();
  for (let t = m.nextStale(0); t >= 0; t = m.nextStale(t + 1)) tracks.add(t);
  return { m, tracks };
}

function missing(required: Set<number>, got: Set<number>): number[] {
  return [...required].filter((t) => !got.has(t)).sort((a, b) => a - b);
}

const cutArb = fc.record({
  tornFraction: fc.double({ min: 0, max: 1, noNaN: true }),
  keepSeed: fc.integer(),
});

test.prop([fc.array(opArb, { minLength: 1, maxLength: 40 }), cutArb], { numRuns: 150 })(
  "a crash at any I/O step never loses an out-of-sync track",
  async (ops, { tornFraction, keepSeed }) => {
    const image = await freshImage();
    const whole = await run(image, ops, { at: Infinity, tornFraction: 0, keep: () => true });
    expect(whole.crashed).toBe(false);
    // Closed cleanly: the bitmap alone holds every mark, plus the extents of
    // writes that were never ended.
    const closed = await recover(whole.survivor);
    expect(closed.m.recovered.crashed).toBe(false);
    expect(missing(whole.required, closed.tracks)).toEqual([]);
    expect(missing(whole.stale, closed.tracks)).toEqual([]);
    for (const t of closed.tracks)
      expect(whole.stale.has(t) || whole.referenced.has(Math.floor(t / 4))).toBe(true);

    for (let at = 0; at <= whole.steps; at++) {
      for (const keep of [() => true, (i: number) => ((keepSeed >>> ((i + at) % 31)) & 1) === 1]) {
        const cut = await run(image, ops, { at, tornFraction, keep });
        const { m, tracks } = await recover(cut.survivor); // must open
        const lost = missing(cut.required, tracks);
        if (lost.length > 0)
          expect.fail(`crash at step ${at}: tracks ${lost.join(",")} not recovered`);
        // Recovery itself may crash; what survives that must still cover the same tracks.
        const again = new MemoryMetaIo(cut.survivor);
        let step = 0;
        const stopAt = (keepSeed >>> 0) % 4;
        again.before = () => {
          if (step++ >= stopAt) throw new Crash("crash in recovery");
        };
        await FileMetadata.load(again, "crash.pcmeta", {
          volumeSize: g.volumeSize,
          trackSize: TRACK,
        }).catch(() => {});
        const twice = await recover(again.survivor(keep));
        expect(missing(cut.required, twice.tracks)).toEqual([]);
        expect(m.outOfSyncTracks).toBe(tracks.size);
      }
    }
  },
);
