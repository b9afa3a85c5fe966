// The activity log through FileMetadata on an in-memory file that records its
// I/O: what the hot path costs, group commit, and the order of writes when an
// extent leaves the log.
import { describe, expect, it } from "vitest";
import {
  FileMetadata,
  type IoOp,
  MemoryMetaIo,
  MetaFlag,
  MetaRole,
  MetadataError,
  formatMetadata,
} from "../../src/metadata/index.js";
import { type Geometry, decodeAl, geometry } from "../../src/metadata/layout.js";

const TRACK = 4096;
/** Four tracks per extent, so extent e holds tracks 4e..4e+3. */
const EXTENT = 4 * TRACK;

async function setup(
  alExtents: number,
  tracks = 1024,
): Promise<{ m: FileMetadata; io: MemoryMetaIo; g: Geometry }> {
  const g = geometry(tracks * TRACK, TRACK, EXTENT, alExtents);
  const io = new MemoryMetaIo();
  await formatMetadata(io, g, {
    volumeSize: g.volumeSize,
    trackSize: TRACK,
    extentSize: EXTENT,
    alExtents,
    role: MetaRole.PRIMARY,
    flags: MetaFlag.CLEAN,
    pairId: "",
    generations: { current: 1n, bitmap: 0n, history: [0n, 0n] },
  });
  const m = await FileMetadata.load(io, "mem.pcmeta", {
    volumeSize: g.volumeSize,
    trackSize: TRACK,
  });
  io.ops.length = 0;
  return { m, io, g };
}

/** The I/O as "header", "al", "bitmap:<page>" and "sync". */
function trace(io: MemoryMetaIo, g: Geometry): string[] {
  return io.ops.map((op: IoOp) => {
    if (op.kind === "sync") return "sync";
    if (op.offset < g.alOffset) return "header";
    if (op.offset < g.bitmapOffset) return "al";
    return `bitmap:${(op.offset - g.bitmapOffset) / 4096}`;
  });
}

/** Extents listed by the newest AL slot in the file as written so far. */
function loggedExtents(io: MemoryMetaIo, g: Geometry): readonly number[] {
  const img = io.image();
  const slots = [0, 1].map((i) =>
    decodeAl(
      img.subarray(g.alOffset + i * g.alSlotSize, g.alOffset + (i + 1) * g.alSlotSize),
      g.alExtents,
    ),
  );
  const valid = slots.flatMap((d) => (d.ok ? [d.value] : []));
  return valid.reduce((a, b) => (b.seq > a.seq ? b : a)).extents;
}

const ticks = async (n = 20): Promise<void> => {
  for (let i = 0; i < n; i++) await Promise.resolve();
};

describe("activity log", () => {
  it("a write to a hot extent returns undefined and does no I/O", async () => {
    const { m, io, g } = await setup(4);
    const first = m.beginWrite(8, 2);
    expect(first).toBeInstanceOf(Promise);
    await first;
    m.endWrite(8, 2);
    expect(trace(io, g)).toEqual(["al", "sync"]);
    io.ops.length = 0;
    for (let i = 0; i < 100; i++) {
      expect(m.beginWrite(8 + (i % 4), 1)).toBeUndefined();
      m.endWrite(8 + (i % 4), 1);
    }
    expect(io.ops).toEqual([]);
  });

  it("misses arriving together share one transaction; misses during it share the next", async () => {
    const { m, io, g } = await setup(16);
    let during: (Promise<void> | undefined)[] = [];
    io.before = (op) => {
      if (
        op.kind === "write" &&
        during.length === 0 &&
        op.offset >= g.alOffset &&
        op.offset < g.bitmapOffset
      )
        during = [m.beginWrite(40, 1), m.beginWrite(44, 1), m.beginWrite(48, 4)];
    };
    const together = [m.beginWrite(0, 1), m.beginWrite(4, 1), m.beginWrite(8, 8)];
    expect(new Set(together).size).toBe(1); // one promise per batch
    const settled = (ps: (Promise<void> | undefined)[]): Promise<void>[] =>
      ps.map((p) => p ?? Promise.reject(new Error("expected a miss")));
    await Promise.all(settled(together));
    await Promise.all(settled(during));
    expect(trace(io, g)).toEqual(["al", "sync", "al", "sync"]);
    expect(loggedExtents(io, g)).toEqual([0, 1, 2, 3, 10, 11, 12]);
  });

  it("a write straddling a hot and a cold extent waits for the cold one", async () => {
    const { m, io, g } = await setup(4);
    await m.beginWrite(0, 1);
    const straddle = m.beginWrite(3, 2); // extents 0 (hot) and 1
    expect(straddle).toBeInstanceOf(Promise);
    await straddle;
    expect(loggedExtents(io, g)).toEqual([0, 1]);
  });

  it("writes the evicted extent's bitmap page, synced, before the transaction that drops it", async () => {
    // 32768 tracks per bitmap page: extent 0 is on page 0, extent 8192 on page 1.
    const { m, io, g } = await setup(2, 40000);
    await m.beginWrite(0, 1);
    m.markStale(0, 1); // e.g. the peer failed this write
    m.endWrite(0, 1);
    await m.beginWrite(4 * 8192, 1);
    m.endWrite(4 * 8192, 1);
    m.markStale(4 * 8192 + 1, 1); // dirty page 1, not part of any eviction
    io.ops.length = 0;
    await m.beginWrite(8, 1); // full: evicts extent 0, the least recently used
    expect(trace(io, g)).toEqual(["bitmap:0", "sync", "al", "sync"]);
    expect(loggedExtents(io, g)).toEqual([2, 8192]);
    expect(io.image()[g.bitmapOffset]).toBe(1);
  });

  it("touching an extent makes it the most recently used", async () => {
    const { m, io, g } = await setup(2);
    for (const t of [0, 4]) {
      await m.beginWrite(t, 1);
      m.endWrite(t, 1);
    }
    expect(m.beginWrite(0, 1)).toBeUndefined(); // extent 0 is now newer than 1
    m.endWrite(0, 1);
    await m.beginWrite(8, 1);
    expect(loggedExtents(io, g)).toEqual([0, 2]);
  });

  it("with every extent referenced, a miss waits until endWrite frees one", async () => {
    const { m, io, g } = await setup(2);
    await m.beginWrite(0, 1);
    await m.beginWrite(4, 1);
    let done = false;
    const waiting = m.beginWrite(8, 1);
    const later = m.beginWrite(12, 1);
    void waiting?.then(() => (done = true));
    io.ops.length = 0;
    await ticks();
    expect(done).toBe(false);
    expect(io.ops).toEqual([]);
    // A hot extent still takes writes while others wait.
    expect(m.beginWrite(5, 1)).toBeUndefined();
    m.endWrite(5, 1);
    m.endWrite(4, 1);
    await waiting;
    expect(loggedExtents(io, g)).toEqual([0, 2]);
    m.endWrite(0, 1);
    await later;
    expect(loggedExtents(io, g)).toEqual([2, 3]);
  });

  it("refuses a write covering more extents than the log holds", async () => {
    const { m } = await setup(2);
    expect(() => m.beginWrite(0, 12)).toThrow(RangeError);
    expect(() => m.beginWrite(1020, 8)).toThrow(RangeError);
    expect(() => m.endWrite(0, 1)).toThrow(/without a beginWrite/);
  });

  it("a failed transaction rejects its writes with EMETA_IO; hot extents go on", async () => {
    const { m, io } = await setup(4);
    await m.beginWrite(0, 1);
    io.before = () => {
      throw new Error("EIO: disk gone");
    };
    const failed = m.beginWrite(4, 1);
    await expect(failed).rejects.toMatchObject({ code: "EMETA_IO" });
    await expect(failed).rejects.toBeInstanceOf(MetadataError);
    m.endWrite(4, 1);
    await expect(m.beginWrite(8, 1)).rejects.toMatchObject({ code: "EMETA_IO" });
    m.endWrite(8, 1);
    expect(m.beginWrite(1, 1)).toBeUndefined();
    m.endWrite(1, 1);
    m.endWrite(0, 1);
  });
});
