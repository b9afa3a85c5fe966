// The "peercopy:checksum" metadata context: one extent per track, clipped to the
// range asked for, each carrying the checksum of its whole track.
import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { MemoryBackend } from "../../src/backend/memory.js";
import { CHECKSUM_SPAN_TRACKS, checksumContext, trackChecksum } from "../../src/pair/checksums.js";

const TRACK = 4096;

async function volumeOf(size: number): Promise<MemoryBackend> {
  const v = new MemoryBackend(size);
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) data[i] = (i * 31 + (i >> 12)) & 0xff;
  await v.write(data, 0, 0);
  return v;
}

describe("checksum context", () => {
  test.prop([fc.integer({ min: 1, max: 300 * TRACK }), fc.integer({ min: 0, max: 1 }), fc.nat()])(
    "extents follow the tracks from the offset asked, within the range and the volume",
    async (size, aligned, seed) => {
      const v = await volumeOf(size);
      const offset = aligned === 1 ? Math.floor((seed % size) / TRACK) * TRACK : seed % size;
      const length = 1 + (seed % (size - offset));
      const extents = await checksumContext(v, TRACK).blockStatus(offset, length);
      expect(extents.length).toBeGreaterThan(0);
      expect(extents.length).toBeLessThanOrEqual(CHECKSUM_SPAN_TRACKS);
      let at = offset;
      const whole = Buffer.alloc(size);
      await v.read(whole, 0);
      for (const e of extents) {
        const track = Math.floor(at / TRACK);
        expect(Math.floor((at + e.length - 1) / TRACK)).toBe(track);
        const bytes = whole.subarray(track * TRACK, Math.min((track + 1) * TRACK, size));
        expect(e.flags).toBe(trackChecksum(bytes));
        at += e.length;
      }
      expect(at).toBeLessThanOrEqual(Math.min(offset + length, size));
      if (extents.length < CHECKSUM_SPAN_TRACKS) expect(at).toBe(Math.min(offset + length, size));
    },
  );

  it("one changed byte changes its track's checksum and no other", async () => {
    const v = await volumeOf(8 * TRACK);
    const ctx = checksumContext(v, TRACK);
    const before = (await ctx.blockStatus(0, 8 * TRACK)).map((e) => e.flags);
    await v.write(Buffer.from([0xee]), 5 * TRACK + 17, 0);
    const after = (await ctx.blockStatus(0, 8 * TRACK)).map((e) => e.flags);
    expect(after.map((f, i) => f !== before[i])).toEqual([
      false,
      false,
      false,
      false,
      false,
      true,
      false,
      false,
    ]);
  });
});
