// MemoryBackend: examples, then a model test against a plain Buffer.
import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import {
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from "../../nbd/constants.js";
import { MemoryBackend } from "../../src/backend/memory.js";

const PAGE = 64 * 1024;
const HOLE = NBD_STATE_HOLE | NBD_STATE_ZERO;

describe("MemoryBackend", () => {
  it("advertises every capability, and read-only only when asked", () => {
    const rw = new MemoryBackend(PAGE);
    expect(rw.size).toBe(PAGE);
    expect(rw.capabilities).toEqual({
      readOnly: false,
      flush: true,
      fua: true,
      trim: true,
      zero: true,
      fastZero: true,
      cache: true,
      blockStatus: true,
      multiConn: true,
    });
    expect(new MemoryBackend(PAGE, true).capabilities.readOnly).toBe(true);
  });

  it("reads zeros where nothing was written and allocates nothing for it", async () => {
    const m = new MemoryBackend(1024 * 1024 * 1024 * 1024); // 1 TiB costs nothing until written
    const into = Buffer.alloc(3 * PAGE, 0xff);
    await m.read(into, m.size - 17 - 3 * PAGE);
    expect(into.equals(Buffer.alloc(3 * PAGE))).toBe(true);
    expect(m.allocated).toBe(0);
  });

  it("writes across page boundaries read back, allocating only the pages touched", async () => {
    const m = new MemoryBackend(10 * PAGE);
    const data = Buffer.from(Array.from({ length: PAGE + 200 }, (_, i) => (i * 13) & 0xff));
    await m.write(data, 2 * PAGE - 100, NBD_CMD_FLAG_FUA);
    expect(m.allocated).toBe(3 * PAGE);
    const back = Buffer.alloc(data.length);
    await m.read(back, 2 * PAGE - 100);
    expect(back.equals(data)).toBe(true);
  });

  it("zeroing a whole page frees it; a partial page is zeroed in place", async () => {
    const m = new MemoryBackend(4 * PAGE);
    await m.write(Buffer.alloc(4 * PAGE, 1), 0, 0);
    await m.zero(PAGE, PAGE, 0);
    expect(m.allocated).toBe(3 * PAGE);
    await m.zero(2 * PAGE + 10, 20, NBD_CMD_FLAG_NO_HOLE);
    expect(m.allocated).toBe(3 * PAGE);
    await m.trim(3 * PAGE, PAGE, 0);
    expect(m.allocated).toBe(2 * PAGE);
    const back = Buffer.alloc(4 * PAGE);
    await m.read(back, 0);
    const expected = Buffer.alloc(4 * PAGE, 1);
    expected.fill(0, PAGE, 2 * PAGE);
    expected.fill(0, 2 * PAGE + 10, 2 * PAGE + 30);
    expected.fill(0, 3 * PAGE);
    expect(back.equals(expected)).toBe(true);
  });

  it("block status: written pages are data, the rest holes, clipped to the size", async () => {
    const m = new MemoryBackend(4 * PAGE + 100);
    await m.write(Buffer.alloc(1, 1), PAGE + 5, 0);
    await m.write(Buffer.alloc(1, 1), 2 * PAGE + 5, 0);
    expect(await m.blockStatus(0, 10 * PAGE)).toEqual([
      { length: PAGE, flags: HOLE },
      { length: 2 * PAGE, flags: 0 },
      { length: PAGE + 100, flags: HOLE },
    ]);
    expect(await m.blockStatus(PAGE + 10, 20)).toEqual([{ length: 20, flags: 0 }]);
  });

  it("flush, cache and close resolve; close drops the data", async () => {
    const m = new MemoryBackend(PAGE);
    await m.write(Buffer.alloc(10, 1), 0, 0);
    await expect(m.flush()).resolves.toBeUndefined();
    await expect(m.cache(0, PAGE)).resolves.toBeUndefined();
    await m.close();
    expect(m.allocated).toBe(0);
  });
});

// The model: a plain Buffer of the same size.
const SIZE = 3 * PAGE + 1000;
const range = fc
  .tuple(fc.nat({ max: SIZE - 1 }), fc.nat({ max: PAGE + 300 }))
  .map(([offset, length]) => ({ offset, length: Math.max(1, Math.min(length, SIZE - offset)) }));
// Offsets near page boundaries find more bugs than uniform ones.
const nearBoundary = fc
  .tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: -3, max: 3 }), fc.nat({ max: 2 * PAGE }))
  .map(([page, delta, length]) => {
    const offset = Math.min(Math.max(page * PAGE + delta, 0), SIZE - 1);
    return { offset, length: Math.max(1, Math.min(length, SIZE - offset)) };
  });
const anyRange = fc.oneof(range, nearBoundary);

const op = fc.oneof(
  fc.record({ kind: fc.constant("write" as const), r: anyRange, fill: fc.nat({ max: 255 }) }),
  fc.record({ kind: fc.constant("zero" as const), r: anyRange, noHole: fc.boolean() }),
  fc.record({ kind: fc.constant("trim" as const), r: anyRange }),
  fc.record({ kind: fc.constant("read" as const), r: anyRange }),
  fc.record({ kind: fc.constant("status" as const), r: anyRange }),
);

describe("MemoryBackend model", () => {
  fcTest.prop([fc.array(op, { maxLength: 40 })], { numRuns: 150 })(
    "write/zero/trim/read agree with a plain Buffer; holes read as zeros",
    async (ops) => {
      const m = new MemoryBackend(SIZE);
      const model = Buffer.alloc(SIZE);
      for (const o of ops) {
        const { offset, length } = o.r;
        switch (o.kind) {
          case "write": {
            const data = Buffer.alloc(length, o.fill);
            data[0] = o.fill ^ 0x5a; // not all one value, so misplaced bytes show
            await m.write(data, offset, 0);
            data.copy(model, offset);
            break;
          }
          case "zero":
            await m.zero(offset, length, o.noHole ? NBD_CMD_FLAG_NO_HOLE : 0);
            model.fill(0, offset, offset + length);
            break;
          case "trim":
            await m.trim(offset, length, 0);
            model.fill(0, offset, offset + length);
            break;
          case "read": {
            const into = Buffer.alloc(length, 0xee);
            await m.read(into, offset);
            expect(into.equals(model.subarray(offset, offset + length))).toBe(true);
            break;
          }
          case "status": {
            const extents = await m.blockStatus(offset, length);
            let at = offset;
            for (const e of extents) {
              expect(e.length).toBeGreaterThan(0);
              if (e.flags & NBD_STATE_ZERO) {
                const zeros = model.subarray(at, at + e.length);
                expect(zeros.equals(Buffer.alloc(e.length))).toBe(true);
              }
              at += e.length;
            }
            expect(at).toBe(offset + length);
            break;
          }
        }
      }
      const all = Buffer.alloc(SIZE);
      await m.read(all, 0);
      expect(all.equals(model)).toBe(true);
      expect(m.allocated).toBeLessThanOrEqual(Math.ceil(SIZE / PAGE) * PAGE);
    },
  );
});
