// TrackState: pending write counts and stale bits per track, checked by example
// and against a model made of a Set and a Map.
import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { TrackState } from "../../src/mirror/tracks.js";

const TRACK = 64 * 1024;

describe("TrackState", () => {
  it("counts tracks, rounding a short last track up", () => {
    expect(new TrackState(10 * TRACK, TRACK).trackCount).toBe(10);
    expect(new TrackState(10 * TRACK + 1, TRACK).trackCount).toBe(11);
    expect(new TrackState(0, TRACK).trackCount).toBe(0);
    expect(new TrackState(0, TRACK).nextStale(0)).toBe(-1);
    expect(new TrackState(0, TRACK).outOfSyncBytes).toBe(0);
  });

  it("pending counts: a track stays pending until its last write is released", () => {
    const t = new TrackState(8 * TRACK, TRACK);
    t.addPending(0, 3);
    t.addPending(2, 2);
    expect(t.pendingTrackCount).toBe(4);
    t.releasePending(2, false);
    expect(t.pendingTrackCount).toBe(4);
    t.releasePending(2, false);
    expect(t.pendingTrackCount).toBe(3);
    for (const track of [0, 1, 3]) t.releasePending(track, false);
    expect(t.pendingTrackCount).toBe(0);
    expect(t.outOfSyncTracks).toBe(0);
  });

  it("pending counts do not wrap with 65536 or more writes on one track", () => {
    // Reachable in async mode without --max-lag: the link queue is unbounded and a
    // stalled link lets writes to one hot track pile up unacknowledged.
    const t = new TrackState(4 * TRACK, TRACK);
    for (let i = 0; i < 65537; i++) t.addPending(1, 1);
    expect(t.pendingTrackCount).toBe(1);
    for (let i = 0; i < 65536; i++) t.releasePending(1, false);
    expect(t.pendingTrackCount).toBe(1);
    t.releasePending(1, false);
    expect(t.pendingTrackCount).toBe(0);
  });

  it("an abandoned write marks its track stale", () => {
    const t = new TrackState(8 * TRACK, TRACK);
    t.addPending(5, 1);
    t.releasePending(5, true);
    expect(t.pendingTrackCount).toBe(0);
    expect(t.isStale(5)).toBe(true);
    expect(t.outOfSyncTracks).toBe(1);
  });

  it("stale bits across a word boundary; marking twice counts once", () => {
    const t = new TrackState(100 * TRACK, TRACK);
    t.markStale(30, 5);
    t.markStale(31, 2);
    expect(t.outOfSyncTracks).toBe(5);
    expect([29, 30, 31, 32, 34, 35].map((x) => t.isStale(x))).toEqual([
      false,
      true,
      true,
      true,
      true,
      false,
    ]);
    t.clearStale(31);
    t.clearStale(31);
    t.clearStale(50);
    expect(t.outOfSyncTracks).toBe(4);
    expect(t.outOfSyncBytes).toBe(4 * TRACK);
  });

  it("nextStale finds the next stale track at or after `from`, across words", () => {
    const t = new TrackState(200 * TRACK, TRACK);
    expect(t.nextStale(0)).toBe(-1);
    t.markStale(31, 1);
    t.markStale(32, 1);
    t.markStale(63, 1);
    t.markStale(130, 1);
    t.markStale(199, 1);
    expect(t.nextStale(0)).toBe(31);
    expect(t.nextStale(31)).toBe(31);
    expect(t.nextStale(32)).toBe(32);
    expect(t.nextStale(33)).toBe(63);
    expect(t.nextStale(64)).toBe(130);
    expect(t.nextStale(131)).toBe(199);
    expect(t.nextStale(199)).toBe(199);
    expect(t.nextStale(200)).toBe(-1);
    expect(t.nextStale(10_000)).toBe(-1);
  });

  it("outOfSyncBytes counts only the real length of a short last track", () => {
    const t = new TrackState(10 * TRACK + 1000, TRACK);
    t.markStale(10, 1);
    expect(t.outOfSyncBytes).toBe(1000);
    t.markStale(9, 1);
    expect(t.outOfSyncBytes).toBe(TRACK + 1000);
    t.markStale(0, 11);
    expect(t.outOfSyncBytes).toBe(10 * TRACK + 1000);
    t.clearStale(10);
    expect(t.outOfSyncBytes).toBe(10 * TRACK);
  });
});

const TRACK_SIZE = 4096;

const scenario = fc
  .record({
    // Volumes of 1..200 tracks cover partial and several 32-track words.
    volumeSize: fc.integer({ min: 1, max: 200 * TRACK_SIZE }),
    ops: fc.array(
      fc.oneof(
        fc.record({ kind: fc.constant("mark" as const), a: fc.nat(), b: fc.nat({ max: 40 }) }),
        fc.record({ kind: fc.constant("clear" as const), a: fc.nat() }),
        fc.record({ kind: fc.constant("add" as const), a: fc.nat(), b: fc.nat({ max: 40 }) }),
        fc.record({
          kind: fc.constant("release" as const),
          a: fc.nat(),
          abandoned: fc.boolean(),
        }),
        fc.record({ kind: fc.constant("next" as const), a: fc.nat() }),
      ),
      { maxLength: 60 },
    ),
  })
  .map((s) => ({ ...s, trackCount: Math.ceil(s.volumeSize / TRACK_SIZE) }));

describe("TrackState model", () => {
  fcTest.prop([scenario], { numRuns: 300 })(
    "agrees with a Set of stale tracks and a Map of pending counts",
    ({ volumeSize, trackCount, ops }) => {
      const t = new TrackState(volumeSize, TRACK_SIZE);
      const stale = new Set<number>();
      const pending = new Map<number, number>();
      const lastLength = volumeSize - (trackCount - 1) * TRACK_SIZE;
      for (const op of ops) {
        const first = op.a % trackCount;
        switch (op.kind) {
          case "mark": {
            const count = Math.min(op.b, trackCount - first);
            t.markStale(first, count);
            for (let x = first; x < first + count; x++) stale.add(x);
            break;
          }
          case "clear":
            t.clearStale(first);
            stale.delete(first);
            break;
          case "add": {
            const count = Math.min(op.b, trackCount - first);
            t.addPending(first, count);
            for (let x = first; x < first + count; x++) pending.set(x, (pending.get(x) ?? 0) + 1);
            break;
          }
          case "release": {
            // Release only what was added: pick the first pending track at or after `first`.
            const track = [...pending.keys()].sort((x, y) => x - y).find((x) => x >= first);
            if (track === undefined) break;
            t.releasePending(track, op.abandoned);
            const left = (pending.get(track) ?? 0) - 1;
            if (left === 0) pending.delete(track);
            else pending.set(track, left);
            if (op.abandoned) stale.add(track);
            break;
          }
          case "next": {
            const from = op.a % (trackCount + 40);
            const expected = [...stale].filter((x) => x >= from).sort((x, y) => x - y)[0] ?? -1;
            expect(t.nextStale(from)).toBe(expected);
            break;
          }
        }
        expect(t.outOfSyncTracks).toBe(stale.size);
        expect(t.pendingTrackCount).toBe(pending.size);
      }
      for (let x = 0; x < trackCount; x++) expect(t.isStale(x)).toBe(stale.has(x));
      const bytes = [...stale].reduce(
        (sum, x) => sum + (x === trackCount - 1 ? lastLength : TRACK_SIZE),
        0,
      );
      expect(t.outOfSyncBytes).toBe(bytes);
      // Walking nextStale visits exactly the stale tracks, in order.
      const walked: number[] = [];
      for (let x = t.nextStale(0); x !== -1; x = t.nextStale(x + 1)) walked.push(x);
      expect(walked).toEqual([...stale].sort((x, y) => x - y));
    },
  );
});
