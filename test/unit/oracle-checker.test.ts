// The write-order oracle checked on its own: the sector record, the checker on
// hand-made images (including ones that break the guarantee, so the checker is
// seen to fail), the checker against a brute-force enumeration of every image a
// crash can leave, and the host workload against simulated mirrors.
import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import {
  HostWorkload,
  SECTOR,
  ViolationKind,
  checkWriteOrder,
  createRng,
  decodeSector,
  describeReport,
  encodeWrite,
  type HostDisk,
  type IssuedWrite,
  type OracleReport,
} from "../helpers/oracle.js";

const TAG = 0xc0ffee;

/** A host history written as events: ["issue", id, firstSector, sectors] | ["ack", id]. */
type Event = readonly ["issue", number, number, number] | readonly ["ack", number];

function history(events: readonly Event[]): IssuedWrite[] {
  const writes: IssuedWrite[] = [];
  let acks = 0;
  for (const e of events) {
    if (e[0] === "issue") {
      const [, id, first, sectors] = e;
      expect(id).toBe(writes.length + 1);
      writes.push({
        id,
        offset: first * SECTOR,
        length: sectors * SECTOR,
        acksSeen: acks,
        ackSeq: undefined,
        error: undefined,
      });
    } else {
      (writes[e[1] - 1] as IssuedWrite).ackSeq = ++acks;
    }
  }
  return writes;
}

/** An image of `sectors` sectors where each listed sector holds the given write's record. */
function imageOf(writes: readonly IssuedWrite[], sectors: number, holders: Record<number, number>) {
  const image = Buffer.alloc(sectors * SECTOR);
  for (const [s, id] of Object.entries(holders)) {
    const w = writes[id - 1] as IssuedWrite;
    const at = Number(s) * SECTOR - w.offset;
    expect(at >= 0 && at < w.length).toBe(true);
    encodeWrite(TAG, w)
      .subarray(at, at + SECTOR)
      .copy(image, Number(s) * SECTOR);
  }
  return image;
}

/** Apply whole writes in the given order. */
function applied(writes: readonly IssuedWrite[], sectors: number, ids: readonly number[]) {
  const image = Buffer.alloc(sectors * SECTOR);
  for (const id of ids) {
    const w = writes[id - 1] as IssuedWrite;
    encodeWrite(TAG, w).copy(image, w.offset);
  }
  return image;
}

function kinds(r: OracleReport): string[] {
  return r.violations.map((v) => v.kind);
}

describe("sector records", () => {
  const w = { id: 7, offset: 3 * SECTOR, length: 4 * SECTOR, acksSeen: 5 };

  it("decode what encodeWrite wrote, sector by sector", () => {
    const data = encodeWrite(TAG, w);
    expect(data.length).toBe(4 * SECTOR);
    for (let i = 0; i < 4; i++) {
      expect(decodeSector(data.subarray(i * SECTOR, (i + 1) * SECTOR))).toEqual({
        kind: "record",
        runTag: TAG,
        id: 7,
        acksSeen: 5,
        firstSector: 3,
        sectors: 4,
        index: i,
      });
    }
  });

  it("tell zeros, foreign data, bad headers and torn sectors apart", () => {
    expect(decodeSector(Buffer.alloc(SECTOR))).toEqual({ kind: "zero" });
    expect(decodeSector(Buffer.alloc(SECTOR, 1)).kind).toBe("garbage");
    const header = encodeWrite(TAG, w).subarray(0, SECTOR);
    header.writeUInt32LE(8, 8); // another id, checksum unchanged
    expect(decodeSector(header)).toMatchObject({ kind: "garbage", why: /checksum/ });
    const torn = encodeWrite(TAG, w).subarray(0, SECTOR);
    torn.fill(0, 300);
    expect(decodeSector(torn)).toMatchObject({ kind: "garbage", why: /torn/ });
  });

  it("the generator is deterministic per seed", () => {
    const a = createRng(42);
    const b = createRng(42);
    const xs = Array.from({ length: 50 }, () => a.int(0, 1000));
    expect(Array.from({ length: 50 }, () => b.int(0, 1000))).toEqual(xs);
    expect(new Set(xs).size).toBeGreaterThan(30);
  });
});

describe("checkWriteOrder on hand-made images", () => {
  // #1 covers sectors 0-3 and is acknowledged; #2 (4-5) is issued after that;
  // #3 (2-3) is issued while #2 is in flight, after #1's acknowledgement.
  const chain = history([
    ["issue", 1, 0, 4],
    ["ack", 1],
    ["issue", 2, 4, 2],
    ["issue", 3, 2, 2],
  ]);
  const check = (image: Buffer, extra: { acksAtCut?: number; trackOrder?: boolean } = {}) =>
    checkWriteOrder({ runTag: TAG, writes: chain, image, trackSize: 2 * SECTOR, ...extra });

  it("accepts every prefix of the history", () => {
    for (const ids of [[], [1], [1, 2], [1, 3], [1, 2, 3], [1, 3, 2]]) {
      const r = check(applied(chain, 8, ids));
      expect(r.violations, `${ids.join(",")}: ${describeReport(r)}`).toEqual([]);
    }
  });

  it("names the pair when a write is there without one acknowledged before it", () => {
    const r = check(applied(chain, 8, [2]));
    expect(r.violationCount).toBe(1);
    expect(r.violations[0]).toMatchObject({ kind: ViolationKind.ORDER, earlier: 1, later: 2 });
    expect(r.violations[0]?.offset).toBe(0);
    expect(describeReport(r)).toMatch(/#2 .*on the image.*#1 .*zeros/);
  });

  it("accepts an in-flight write half there, and refuses a dependency half there", () => {
    // #2 torn: allowed, it was in flight and nothing depends on it.
    expect(check(imageOf(chain, 8, { 0: 1, 1: 1, 2: 1, 3: 1, 5: 2 })).violations).toEqual([]);
    // #1 torn while #3 (issued after #1's acknowledgement) is there.
    const r = check(imageOf(chain, 8, { 0: 1, 2: 3, 3: 3 }));
    expect(kinds(r)).toEqual([ViolationKind.ORDER]);
    expect(r.violations[0]).toMatchObject({ earlier: 1, later: 3, offset: SECTOR });
  });

  it("accepts a write overwritten by a later one, not one reverted to an older one", () => {
    expect(check(applied(chain, 8, [1, 3])).whole).toBe(2);
    const history3 = history([
      ["issue", 1, 0, 2],
      ["ack", 1],
      ["issue", 2, 0, 2],
      ["ack", 2],
      ["issue", 3, 4, 1],
    ]);
    // #3 is there, so #2 must be; but its sector 1 holds #1 (older than #2).
    const image = imageOf(history3, 8, { 0: 2, 1: 1, 4: 3 });
    const r = checkWriteOrder({ runTag: TAG, writes: history3, image, trackSize: 4096 });
    expect(r.violations[0]).toMatchObject({ kind: "order", earlier: 2, later: 3, offset: SECTOR });
    expect(r.violations[0]?.message).toMatch(/holds write #1/);
  });

  it("lets concurrent writes to one sector land in either order", () => {
    const racing = history([
      ["issue", 1, 0, 2],
      ["issue", 2, 1, 2],
      ["ack", 2],
      ["ack", 1],
      ["issue", 3, 6, 1],
    ]);
    for (const ids of [
      [1, 2, 3],
      [2, 1, 3],
    ]) {
      const r = checkWriteOrder({
        runTag: TAG,
        writes: racing,
        image: applied(racing, 8, ids),
        trackSize: 4096,
      });
      expect(r.violations, describeReport(r)).toEqual([]);
    }
  });

  it("sync mode: a write acknowledged before the cut must be there", () => {
    expect(check(applied(chain, 8, [1]), { acksAtCut: 1 }).violations).toEqual([]);
    const r = check(applied(chain, 8, []), { acksAtCut: 1 });
    expect(r.violations).toMatchObject([{ kind: ViolationKind.LOST_ACK, earlier: 1 }]);
  });

  it("track order: a write's subtasks arrive whole and in sequence", () => {
    // Tracks of 2 sectors: #1 spans tracks 0 and 1.
    const ok = check(imageOf(chain, 8, { 0: 1, 1: 1 }), { trackOrder: true });
    expect(ok.violations).toEqual([]);
    const gap = check(imageOf(chain, 8, { 2: 1, 3: 1 }), { trackOrder: true });
    expect(gap.violations).toMatchObject([{ kind: ViolationKind.TRACK_ORDER, earlier: 1 }]);
    const torn = check(imageOf(chain, 8, { 0: 1 }), { trackOrder: true });
    expect(torn.violations[0]?.message).toMatch(/torn/);
    // Without the option both are crash-consistent: #1 was in flight as far as the image shows.
    expect(check(imageOf(chain, 8, { 2: 1, 3: 1 })).violations).toEqual([]);
  });

  it("reports data no write of this run put there", () => {
    const image = applied(chain, 8, [1]);
    image.fill(0xaa, 7 * SECTOR);
    const other = encodeWrite(TAG + 1, chain[1] as IssuedWrite);
    other.copy(image, 4 * SECTOR);
    const r = check(image);
    expect(kinds(r)).toEqual([ViolationKind.CORRUPT, ViolationKind.CORRUPT, ViolationKind.CORRUPT]);
    expect(r.violations.map((v) => v.offset)).toEqual([4 * SECTOR, 5 * SECTOR, 7 * SECTOR]);
    expect(r.violations[0]?.message).toMatch(/another run/);
    // A record moved to another sector is as wrong as garbage.
    const moved = applied(chain, 8, [1]);
    moved.copy(moved, 6 * SECTOR, 0, SECTOR);
    expect(check(moved).violations[0]?.message).toMatch(/wrong place/);
  });
});

// --- against brute force ---

/**
 * Every holder each sector can show after a crash at some point of `events`:
 * writes acknowledged by then are applied, writes in flight may be applied to
 * any of their sectors, later ones are not; on each sector the applied writes
 * land in any order that puts X after W when W was acknowledged before X was
 * issued. The image is reachable if one crash point explains every sector.
 */
function reachable(events: readonly Event[], sectors: number, holders: readonly number[]): boolean {
  const issuedAt = new Map<number, number>();
  const ackedAt = new Map<number, number>();
  const covers = new Map<number, [number, number]>();
  events.forEach((e, i) => {
    if (e[0] === "issue") {
      issuedAt.set(e[1], i);
      covers.set(e[1], [e[2], e[2] + e[3]]);
    } else ackedAt.set(e[1], i);
  });
  const mustPrecede = (w: number, x: number): boolean =>
    (ackedAt.get(w) ?? Infinity) < (issuedAt.get(x) as number);
  const lastOfSomeOrder = (set: readonly number[]): Set<number> => {
    const out = new Set<number>();
    const walk = (left: readonly number[], placed: readonly number[]): void => {
      if (left.length === 0) {
        out.add(placed.at(-1) ?? 0);
        return;
      }
      for (const x of left) {
        const rest = left.filter((y) => y !== x);
        if (rest.some((y) => mustPrecede(y, x))) continue; // y must come first
        walk(rest, [...placed, x]);
      }
    };
    walk(set, []);
    return out;
  };
  for (let t = 0; t <= events.length; t++) {
    const before = events.slice(0, t);
    const issued = new Set(before.filter((e) => e[0] === "issue").map((e) => e[1]));
    const acked = new Set(before.filter((e) => e[0] === "ack").map((e) => e[1]));
    let ok = true;
    for (let s = 0; s < sectors && ok; s++) {
      const writers = [...issued].filter((id) => {
        const [a, b] = covers.get(id) as [number, number];
        return a <= s && s < b;
      });
      const must = writers.filter((id) => acked.has(id));
      const may = writers.filter((id) => !acked.has(id));
      let found = false;
      for (let mask = 0; mask < 1 << may.length && !found; mask++) {
        const chosen = [...must, ...may.filter((_, i) => (mask & (1 << i)) !== 0)];
        found = lastOfSomeOrder(chosen).has(holders[s] as number);
      }
      ok = found;
    }
    if (ok) return true;
  }
  return false;
}

const SECTORS = 4;

/** Histories of up to 4 writes over 5 sectors, some never acknowledged. */
const arbHistory = fc
  .array(
    fc.record({
      first: fc.integer({ min: 0, max: SECTORS - 1 }),
      len: fc.integer({ min: 1, max: 3 }),
      ackAfter: fc.option(fc.nat(4)),
    }),
    { minLength: 1, maxLength: 4 },
  )
  .map((ws) => {
    // Write i is issued at slot 2i; its ack, if any, goes after some later issues.
    const slots: { at: number; e: Event }[] = [];
    ws.forEach((w, i) => {
      const len = Math.min(w.len, SECTORS - w.first);
      slots.push({ at: 2 * i, e: ["issue", i + 1, w.first, len] });
      if (w.ackAfter !== null) slots.push({ at: 2 * (i + w.ackAfter) + 1, e: ["ack", i + 1] });
    });
    return slots.sort((a, b) => a.at - b.at).map((s) => s.e);
  });

describe("checkWriteOrder against every image a crash can leave", () => {
  fcTest.prop([arbHistory, fc.array(fc.nat(4), { minLength: SECTORS, maxLength: SECTORS })], {
    numRuns: 1500,
  })("finds an order violation exactly when no crash point explains the image", (events, picks) => {
    const writes = history(events);
    // Pick each sector's holder among zeros and the writes covering it.
    const holders = Array.from({ length: SECTORS }, (_, s) => {
      const options = [
        0,
        ...writes
          .filter((w) => w.offset / SECTOR <= s && s < (w.offset + w.length) / SECTOR)
          .map((w) => w.id),
      ];
      return options[(picks[s] as number) % options.length] as number;
    });
    const image = imageOf(
      writes,
      SECTORS,
      Object.fromEntries(holders.flatMap((id, s) => (id === 0 ? [] : [[s, id]]))),
    );
    const r = checkWriteOrder({ runTag: TAG, writes, image, trackSize: 4096 });
    const orderOk = !r.violations.some((v) => v.kind === ViolationKind.ORDER);
    expect(
      orderOk,
      `${JSON.stringify(events)} holders ${holders.join(",")}\n${describeReport(r)}`,
    ).toBe(reachable(events, SECTORS, holders));
  });

  it("the enumeration itself refuses the plain violation", () => {
    const events: Event[] = [
      ["issue", 1, 0, 1],
      ["ack", 1],
      ["issue", 2, 1, 1],
    ];
    expect(reachable(events, 2, [0, 2])).toBe(false);
    expect(reachable(events, 2, [1, 2])).toBe(true);
    expect(reachable(events, 2, [1, 0])).toBe(true);
  });
});

// --- the workload against simulated mirrors ---

interface Pending {
  readonly data: Buffer;
  readonly offset: number;
  readonly resolve: () => void;
}

/**
 * A primary that completes writes in random order and puts each on the
 * replication stream when it acknowledges it, as an async mirror does.
 */
class SimulatedPrimary implements HostDisk {
  readonly pending: Pending[] = [];
  readonly stream: { data: Buffer; offset: number }[] = [];
  maxPending = 0;

  write(data: Buffer, offset: number): Promise<void> {
    return new Promise((resolve) => {
      this.pending.push({ data, offset, resolve });
      this.maxPending = Math.max(this.maxPending, this.pending.length);
    });
  }

  async completeOne(pick: number): Promise<void> {
    const [p] = this.pending.splice(pick % this.pending.length, 1);
    if (p === undefined) return;
    this.stream.push({ data: p.data, offset: p.offset });
    p.resolve();
    await new Promise((r) => setImmediate(r));
  }

  /** The secondary after it applied the stream entries `indexes`, in that order. */
  image(size: number, indexes: readonly number[]): Buffer {
    const out = Buffer.alloc(size);
    for (const i of indexes) {
      const e = this.stream[i];
      if (e !== undefined) e.data.copy(out, e.offset);
    }
    return out;
  }
}

const REGION = 1024 * 1024;
const TRACK = 16 * 1024;

async function simulate(seed: number, writes: number) {
  const primary = new SimulatedPrimary();
  const workload = new HostWorkload(
    { seed, runTag: TAG, regionOffset: 0, regionSize: REGION, trackSize: TRACK, maxWrites: writes },
    primary,
  );
  workload.start();
  const rng = createRng(seed ^ 0x5bd1e995);
  for (let guard = 0; guard < 10 * writes && primary.pending.length > 0; guard++)
    await primary.completeOne(rng.int(0, 1 << 30));
  await workload.settled();
  return { primary, workload };
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

describe("HostWorkload", () => {
  it("records what each write could depend on, and overlaps nothing in flight", async () => {
    const { primary, workload } = await simulate(7, 400);
    const ws = workload.writes;
    expect(ws.length).toBe(400);
    expect(ws.every((w) => w.ackSeq !== undefined)).toBe(true);
    expect(primary.maxPending).toBeGreaterThan(4);
    expect(primary.maxPending).toBeLessThanOrEqual(16);
    expect(
      ws.filter(
        (w) => Math.floor(w.offset / TRACK) !== Math.floor((w.offset + w.length - 1) / TRACK),
      ).length,
    ).toBeGreaterThan(50);
    // The stream is in acknowledgement order: acksSeen is what came before the issue.
    const ackOrder = primary.stream.map((e) => decodeSector(e.data.subarray(0, SECTOR)));
    ackOrder.forEach((c, i) => {
      if (c.kind !== "record") throw new Error("not a record");
      expect((ws[c.id - 1] as IssuedWrite).ackSeq).toBe(i + 1);
    });
    // Chains: many writes were issued right after the acknowledgement they depend on.
    expect(
      ws.filter((w, i) => i > 0 && w.acksSeen > (ws[i - 1] as IssuedWrite).acksSeen).length,
    ).toBeGreaterThan(100);
  });

  it("every prefix of an in-order stream passes; dropping a needed write fails", async () => {
    const { primary, workload } = await simulate(11, 300);
    const writes = workload.writes;
    const size = REGION;
    for (const k of [0, 1, 50, 150, 299, 300]) {
      const r = checkWriteOrder({
        runTag: TAG,
        writes,
        image: primary.image(size, range(k)),
        trackSize: TRACK,
        acksAtCut: k,
        trackOrder: true,
      });
      expect(r.violations, describeReport(r)).toEqual([]);
      expect(r.newestPresent > 0).toBe(k > 0);
    }
    // Leave out entry i of the first 200 when a later entry depends on it and i
    // still shows: the checker must name exactly that write.
    let caught = 0;
    for (let i = 0; i < 200; i += 7) {
      const kept = range(200).filter((j) => j !== i);
      const missing = decodeSector((primary.stream[i] as { data: Buffer }).data);
      if (missing.kind !== "record") throw new Error("not a record");
      const r = checkWriteOrder({
        runTag: TAG,
        writes,
        image: primary.image(size, kept),
        trackSize: TRACK,
      });
      const truth = checkWriteOrder({
        runTag: TAG,
        writes,
        image: primary.image(size, range(200)),
        trackSize: TRACK,
      });
      expect(truth.violations).toEqual([]);
      if (r.violationCount === 0) continue; // overwritten later, or nothing issued after it
      caught++;
      expect(r.violations.every((v) => v.kind === "order" && v.earlier === missing.id)).toBe(true);
    }
    expect(caught).toBeGreaterThan(10);
  });

  it("a mirror that reorders the stream is caught", async () => {
    const { primary, workload } = await simulate(23, 300);
    // Apply the first 150 entries newest first: overlapping writes revert.
    const r = checkWriteOrder({
      runTag: TAG,
      writes: workload.writes,
      image: primary.image(REGION, range(150).reverse()),
      trackSize: TRACK,
    });
    expect(r.violationCount).toBeGreaterThan(0);
    expect(r.violations.every((v) => v.kind === ViolationKind.ORDER)).toBe(true);
  });

  it("stops issuing at stopIssuing() and after a failed write", async () => {
    const failing: HostDisk = { write: () => Promise.reject(new Error("gone")) };
    const w = new HostWorkload(
      { seed: 1, runTag: TAG, regionOffset: 4096, regionSize: 65536, trackSize: TRACK },
      failing,
    );
    w.start();
    await w.settled();
    expect(w.writes.length).toBeGreaterThan(0);
    expect(w.writes.length).toBeLessThanOrEqual(16);
    expect(w.writes.every((x) => x.error === "gone" && x.offset >= 4096)).toBe(true);
    await w.whenIssued(1000); // resolves: issuing stopped
  });
});
