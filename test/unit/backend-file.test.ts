// FileBackend on temporary files. Hole reporting, fast zeroing and TRIM need the
// native addon: without it those checks are skipped with a loud message on a
// developer machine and fail under CI, where the addon is always built.
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_ENOTSUP,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from "../../nbd/constants.js";
import { NbdRequestError } from "../../nbd/errors.js";
import { FileBackend, VolumeOpenError } from "../../src/backend/file.js";
import { nativeFileOps } from "../../src/backend/native-fileops.js";

const KiB = 1024;
const MiB = 1024 * KiB;
// 64 KiB: a multiple of every common filesystem block size, so holes are exact.
const CHUNK = 64 * KiB;
const HOLE = NBD_STATE_HOLE | NBD_STATE_ZERO;
const IN_CI = process.env.CI === "true";
const native = nativeFileOps();
if (!native.available) {
  const why = `*** native addon missing: hole, fast-zero and TRIM checks of FileBackend ${
    IN_CI ? "FAIL under CI" : "are SKIPPED"
  }: ${native.warning} ***`;
  console.warn(`\n${why}\n`);
}

let dir = "";
let n = 0;
const opened: FileBackend[] = [];
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "peercopy-file-backend-"));
});
afterEach(async () => {
  await Promise.allSettled(opened.splice(0).map((b) => b.close()));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const fresh = (): string => join(dir, `image-${n++}.img`);

async function create(size: number, readOnly = false): Promise<FileBackend> {
  const b = await FileBackend.open(fresh(), { createSize: size, readOnly });
  opened.push(b);
  return b;
}

const pattern = (length: number, seed: number): Buffer =>
  Buffer.from(Array.from({ length }, (_, i) => (i * 7 + seed) & 0xff));

async function readAt(b: FileBackend, offset: number, length: number): Promise<Buffer> {
  const into = Buffer.alloc(length, 0xee);
  await b.read(into, offset);
  return into;
}

/** Skips (or fails under CI) a check that needs the native addon. */
function needsNative(ctx: { skip: () => void }): void {
  if (native.available) return;
  if (IN_CI) throw new Error(`native addon required under CI: ${native.warning}`);
  ctx.skip();
}

describe("FileBackend.open", () => {
  it("creates a sparse file of createSize", async () => {
    const path = fresh();
    const b = await FileBackend.open(path, { createSize: 64 * MiB });
    opened.push(b);
    expect(b.size).toBe(64 * MiB);
    expect(b.isBlockDevice).toBe(false);
    expect(b.capabilities.readOnly).toBe(false);
    const st = await stat(path);
    expect(st.size).toBe(64 * MiB);
    expect(st.blocks * 512).toBeLessThan(MiB);
  });

  it("a missing file without a size is ENOENT, also when read-only", async () => {
    const missing = fresh();
    const err: unknown = await FileBackend.open(missing).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VolumeOpenError);
    expect((err as VolumeOpenError).code).toBe("ENOENT");
    const ro: unknown = await FileBackend.open(missing, { readOnly: true, createSize: MiB }).catch(
      (e: unknown) => e,
    );
    expect((ro as VolumeOpenError).code).toBe("ENOENT");
    await expect(stat(missing)).rejects.toThrow();
  });

  it("opens an existing file at its size and ignores createSize", async () => {
    const path = fresh();
    await writeFile(path, Buffer.alloc(12345, 9));
    const b = await FileBackend.open(path, { createSize: MiB });
    opened.push(b);
    expect(b.size).toBe(12345);
    expect(await readAt(b, 12340, 5)).toEqual(Buffer.alloc(5, 9));
  });

  it("refuses a directory with EINVAL", async () => {
    const path = fresh();
    await mkdir(path);
    const err: unknown = await FileBackend.open(path).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VolumeOpenError);
    expect((err as VolumeOpenError).code).toBe("EINVAL");
  });

  it("read-only: advertised, and reads work", async () => {
    const path = fresh();
    await writeFile(path, pattern(4096, 1));
    const b = await FileBackend.open(path, { readOnly: true });
    opened.push(b);
    expect(b.capabilities.readOnly).toBe(true);
    expect(await readAt(b, 0, 4096)).toEqual(pattern(4096, 1));
  });
});

describe("FileBackend I/O", () => {
  it("writes read back, unaligned and across 1 MiB boundaries, with and without FUA", async () => {
    const b = await create(4 * MiB);
    const data = pattern(MiB + 333, 3);
    await b.write(data, MiB - 100, 0);
    expect((await readAt(b, MiB - 100, data.length)).equals(data)).toBe(true);
    const fua = pattern(4097, 5);
    await b.write(fua, 3 * MiB + 1, NBD_CMD_FLAG_FUA);
    expect((await readAt(b, 3 * MiB + 1, fua.length)).equals(fua)).toBe(true);
    await b.flush();
    expect(await readAt(b, 0, 10)).toEqual(Buffer.alloc(10));
  });

  it("concurrent writes to disjoint ranges all land", async () => {
    const b = await create(MiB);
    await Promise.all(
      Array.from({ length: 64 }, (_, i) => b.write(pattern(CHUNK / 4, i), i * (CHUNK / 4), 0)),
    );
    for (let i = 0; i < 64; i += 9)
      expect((await readAt(b, i * (CHUNK / 4), CHUNK / 4)).equals(pattern(CHUNK / 4, i))).toBe(
        true,
      );
  });

  it("zero, with and without NO_HOLE, reads back zeros (aligned and unaligned)", async () => {
    const b = await create(4 * MiB);
    await b.write(Buffer.alloc(4 * MiB, 0xaa), 0, 0);
    await b.zero(CHUNK, CHUNK, 0);
    await b.zero(3 * CHUNK, CHUNK, NBD_CMD_FLAG_NO_HOLE);
    await b.zero(5 * CHUNK + 7, 1000, 0);
    await b.zero(6 * CHUNK + 7, 1000, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA);
    await b.zero(MiB + 1, 2 * MiB + 5, 0); // over 1 MiB: the fallback writes it in several chunks
    const expected = Buffer.alloc(4 * MiB, 0xaa);
    expected.fill(0, CHUNK, 2 * CHUNK);
    expected.fill(0, 3 * CHUNK, 4 * CHUNK);
    expected.fill(0, 5 * CHUNK + 7, 5 * CHUNK + 1007);
    expected.fill(0, 6 * CHUNK + 7, 6 * CHUNK + 1007);
    expected.fill(0, MiB + 1, 3 * MiB + 6);
    expect((await readAt(b, 0, 4 * MiB)).equals(expected)).toBe(true);
  });

  it("FAST_ZERO succeeds with the addon, and is ENOTSUP without it", async () => {
    const b = await create(MiB);
    await b.write(Buffer.alloc(CHUNK, 1), 0, 0);
    const result = b.zero(0, CHUNK, NBD_CMD_FLAG_FAST_ZERO);
    if (native.available) {
      await result;
      expect((await readAt(b, 0, CHUNK)).equals(Buffer.alloc(CHUNK))).toBe(true);
    } else {
      const err: unknown = await result.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NbdRequestError);
      expect((err as NbdRequestError).errno).toBe(NBD_ENOTSUP);
    }
  });

  it("cache reads the range without changing it", async () => {
    const b = await create(3 * MiB);
    await b.write(pattern(100, 4), 2 * MiB, 0);
    await b.cache(0, 3 * MiB);
    await b.cache(5, 0);
    expect(await readAt(b, 2 * MiB, 100)).toEqual(pattern(100, 4));
  });

  it("TRIM is advertised with the addon, and frees the range to zeros", async (ctx) => {
    const b = await create(MiB);
    expect(b.capabilities.trim).toBe(native.available);
    needsNative(ctx);
    await b.write(Buffer.alloc(4 * CHUNK, 0x11), 0, 0);
    await b.trim(CHUNK, 2 * CHUNK, NBD_CMD_FLAG_FUA);
    const expected = Buffer.alloc(4 * CHUNK, 0x11);
    expected.fill(0, CHUNK, 3 * CHUNK);
    expect((await readAt(b, 0, 4 * CHUNK)).equals(expected)).toBe(true);
    expect(await b.blockStatus(CHUNK, 2 * CHUNK)).toEqual([{ length: 2 * CHUNK, flags: HOLE }]);
  });
});

describe("FileBackend block status", () => {
  it("reports holes and data of a sparse file", async (ctx) => {
    needsNative(ctx);
    const b = await create(MiB);
    expect(await b.blockStatus(0, MiB)).toEqual([{ length: MiB, flags: HOLE }]);
    await b.write(Buffer.alloc(CHUNK, 1), 2 * CHUNK, 0);
    await b.flush();
    expect(await b.blockStatus(0, MiB)).toEqual([
      { length: 2 * CHUNK, flags: HOLE },
      { length: CHUNK, flags: 0 },
      { length: MiB - 3 * CHUNK, flags: HOLE },
    ]);
    // Clipped to the size, starting mid-extent.
    expect(await b.blockStatus(2 * CHUNK + 10, 10 * MiB)).toEqual([
      { length: CHUNK - 10, flags: 0 },
      { length: MiB - 3 * CHUNK, flags: HOLE },
    ]);
  });

  it("zero without NO_HOLE punches a hole", async (ctx) => {
    needsNative(ctx);
    const b = await create(MiB);
    await b.write(Buffer.alloc(MiB, 2), 0, 0);
    await b.zero(CHUNK, CHUNK, 0);
    expect(await b.blockStatus(0, 3 * CHUNK)).toEqual([
      { length: CHUNK, flags: 0 },
      { length: CHUNK, flags: HOLE },
      { length: CHUNK, flags: 0 },
    ]);
  });

  it.skipIf(native.available)("without the addon the whole range is reported as data", async () => {
    const b = await create(MiB);
    expect(await b.blockStatus(0, 2 * MiB)).toEqual([{ length: MiB, flags: 0 }]);
  });
});

describe("FileBackend.writev", () => {
  /** A payload in uneven pieces, as a gathered NBD WRITE arrives. */
  const pieces = (data: Buffer, cuts: number[]): Buffer[] => {
    const out: Buffer[] = [];
    let at = 0;
    for (const cut of [...cuts, data.length]) {
      out.push(data.subarray(at, cut));
      at = cut;
    }
    return out;
  };

  it("writes the pieces in order, inline (small), through the pool (large) and with FUA", async () => {
    const b = await FileBackend.open(fresh(), { createSize: 4 * MiB, inlineMax: 16 * KiB });
    opened.push(b);
    const small = pattern(4 * KiB, 1);
    const large = randomBytes(MiB + 3);
    const fua = pattern(8 * KiB, 3);
    await b.writev(pieces(small, [100, 101, 4000]), 512, 0);
    await b.writev(pieces(large, [65508, 131044, 700000]), MiB, 0);
    await b.writev(pieces(fua, [1]), 3 * MiB, NBD_CMD_FLAG_FUA);
    expect(await readAt(b, 512, small.length)).toEqual(small);
    expect(await readAt(b, MiB, large.length)).toEqual(large);
    expect(await readAt(b, 3 * MiB, fua.length)).toEqual(fua);
    // Nothing around them was touched.
    expect(await readAt(b, 0, 512)).toEqual(Buffer.alloc(512));
    expect(await readAt(b, 512 + small.length, 64)).toEqual(Buffer.alloc(64));
  });

  it("goes through the pool when inline writes are off", async () => {
    const b = await FileBackend.open(fresh(), { createSize: MiB, inlineWrites: false });
    opened.push(b);
    const data = pattern(6 * KiB, 4);
    await b.writev(pieces(data, [10, 5000]), 4 * KiB, 0);
    expect(await readAt(b, 4 * KiB, data.length)).toEqual(data);
  });

  it("a failing inline writev rejects (read-only descriptor)", async () => {
    const path = fresh();
    await writeFile(path, Buffer.alloc(64 * KiB));
    const b = await FileBackend.open(path, { readOnly: true });
    opened.push(b);
    await expect(b.writev([Buffer.alloc(10), Buffer.alloc(10)], 0, 0)).rejects.toThrow(/EBADF/);
  });
});
