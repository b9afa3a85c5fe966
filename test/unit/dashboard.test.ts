import { afterEach, describe, expect, it } from "vitest";
import { Dashboard, type MarkSource } from "../../src/admin/dashboard.js";

const TiB = 1024 ** 4;
const TRACK = 64 * 1024;

function marksAt(tracks: readonly number[]): MarkSource {
  const sorted = [...tracks].sort((a, b) => a - b);
  return {
    outOfSyncTracks: sorted.length,
    nextStale: (from) => sorted.find((t) => t >= from) ?? -1,
  };
}

const dashboards: Dashboard[] = [];
function dashboard(status: Record<string, unknown>, marks?: MarkSource): Dashboard {
  const d = new Dashboard({ status: () => status, marks });
  dashboards.push(d);
  return d;
}
afterEach(() => {
  for (const d of dashboards.splice(0)) d.stop();
});

describe("dashboard track map", () => {
  it("a 1 TiB volume fits in 8192 cells; a cell's byte is its marked share", () => {
    const perCell = TiB / TRACK / 8192; // 2048 tracks
    const full = Array.from({ length: perCell }, (_, i) => 5 * perCell + i);
    const half = Array.from({ length: perCell / 2 }, (_, i) => 9 * perCell + i);
    const d = dashboard(
      { host: { size: TiB }, trackSize: TRACK },
      marksAt([0, 1, ...full, ...half]),
    );
    const map = d.trackMap(8192) as {
      tracksPerCell: number;
      cells: number;
      markedTracks: number;
      data: string;
    };
    expect(map.tracksPerCell).toBe(perCell);
    expect(map.cells).toBe(8192);
    expect(map.markedTracks).toBe(2 + full.length + half.length);
    const bytes = Buffer.from(map.data, "base64");
    expect(bytes.length).toBe(8192);
    expect(bytes[0]).toBe(1); // 2 of 2048: still visible
    expect(bytes[5]).toBe(255);
    expect(bytes[9]).toBe(128);
    expect([...bytes].filter((b) => b !== 0).length).toBe(3);
  });

  it("the short last cell is full when all its tracks are marked", () => {
    // 10 tracks in cells of 4: the third cell holds tracks 8 and 9 only.
    const d = dashboard({ host: { size: 10 * TRACK }, trackSize: TRACK }, marksAt([8, 9]));
    const map = d.trackMap(3) as { tracksPerCell: number; cells: number; data: string };
    expect(map.tracksPerCell).toBe(4);
    expect([...Buffer.from(map.data, "base64")]).toEqual([0, 0, 255]);
  });

  it("without out-of-sync marks the map says so", () => {
    const d = dashboard({ pairState: "simplex", host: { size: TRACK }, trackSize: TRACK });
    expect(d.trackMap(1)).toMatchObject({ error: "this controller keeps no out-of-sync tracks" });
  });
});
