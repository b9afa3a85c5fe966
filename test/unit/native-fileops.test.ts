import { constants as osConstants, tmpdir } from "node:os";
import { mkdtemp, open, rm, stat, writeFile, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  DEFAULT_ADDON_PATHS,
  isNotSupported,
  loadNativeFileOps,
  nativeFileOps,
  type NativeFileOps,
} from "../../src/backend/native-fileops.js";

const MiB = 1024 * 1024;
// Data chunks are 64 KiB so that every common filesystem block size divides them
// and the hole boundaries below are exact.
const CHUNK = 64 * 1024;
const IN_CI = process.env.CI === "true";

const status = nativeFileOps();
if (!status.available) {
  console.warn(`\n*** SKIPPING native file operation tests: ${status.warning} ***\n`);
}

let dir = "";
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "peercopy-native-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A sparse file of `size` bytes with `fill`-filled chunks written at `dataAt`. */
async function sparseFile(name: string, size: number, dataAt: number[], fill = 0xab) {
  const handle = await open(join(dir, name), "w+");
  await handle.truncate(size);
  for (const offset of dataAt) await handle.write(Buffer.alloc(CHUNK, fill), 0, CHUNK, offset);
  await handle.sync();
  return handle;
}

async function readAt(handle: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  const { bytesRead } = await handle.read(buf, 0, length, offset);
  expect(bytesRead).toBe(length);
  return buf;
}

describe("native file operations: addon present", () => {
  it("is built (required under CI)", () => {
    if (IN_CI) expect(status.available ? "" : status.warning).toBe("");
    if (status.available) expect(DEFAULT_ADDON_PATHS).toContain(status.path);
  });
});

describe.skipIf(!status.available)("native file operations on a regular file", () => {
  const ops = status.ops as NativeFileOps;

  it("punchHole frees the blocks and the range reads back zeros", async () => {
    const handle = await sparseFile("punch.img", 4 * MiB, [0, CHUNK, 2 * CHUNK, 3 * CHUNK]);
    try {
      const before = await handle.stat();
      await ops.punchHole(handle.fd, CHUNK, 2 * CHUNK);
      const after = await handle.stat();
      expect(after.size).toBe(4 * MiB);
      // st_blocks counts 512-byte units.
      expect(before.blocks - after.blocks).toBe((2 * CHUNK) / 512);
      expect((await readAt(handle, CHUNK, 2 * CHUNK)).every((b) => b === 0)).toBe(true);
      expect((await readAt(handle, 0, CHUNK)).every((b) => b === 0xab)).toBe(true);
      expect((await readAt(handle, 3 * CHUNK, CHUNK)).every((b) => b === 0xab)).toBe(true);
    } finally {
      await handle.close();
    }
  });

  it("zeroRange zeroes an unaligned range and keeps the size", async () => {
    const handle = await sparseFile("zero.img", 1 * MiB, [0]);
    try {
      try {
        await ops.zeroRange(handle.fd, 1000, 5000);
      } catch (err) {
        // tmpfs and some network filesystems have no ZERO_RANGE; the caller falls back.
        console.warn(`\n*** zeroRange unsupported on ${dir}: ${String(err)} ***\n`);
        expect(isNotSupported(err)).toBe(true);
        return;
      }
      const buf = await readAt(handle, 0, CHUNK);
      expect(buf.subarray(0, 1000).every((b) => b === 0xab)).toBe(true);
      expect(buf.subarray(1000, 6000).every((b) => b === 0)).toBe(true);
      expect(buf.subarray(6000).every((b) => b === 0xab)).toBe(true);
      await ops.zeroRange(handle.fd, 1 * MiB - 10, 100);
      expect((await handle.stat()).size).toBe(1 * MiB);
    } finally {
      await handle.close();
    }
  });

  describe("hole reporting: data at 0 and at 1 MiB in a 4 MiB sparse file", () => {
    let handle: FileHandle;
    beforeAll(async () => {
      handle = await sparseFile("layout.img", 4 * MiB, [0, 1 * MiB]);
    });
    afterAll(async () => {
      await handle.close();
    });

    it("extents gives the boundaries of the whole file", async () => {
      expect(await ops.extents(handle.fd, 0, 4 * MiB, 100)).toEqual([
        { length: CHUNK, hole: false },
        { length: 1 * MiB - CHUNK, hole: true },
        { length: CHUNK, hole: false },
        { length: 3 * MiB - CHUNK, hole: true },
      ]);
    });

    it("extents clips to a sub-range, honours maxExtents and calls past EOF a hole", async () => {
      expect(await ops.extents(handle.fd, CHUNK / 2, 1 * MiB, 100)).toEqual([
        { length: CHUNK / 2, hole: false },
        { length: 1 * MiB - CHUNK, hole: true },
        { length: CHUNK / 2, hole: false },
      ]);
      expect(await ops.extents(handle.fd, 0, 4 * MiB, 2)).toEqual([
        { length: CHUNK, hole: false },
        { length: 1 * MiB - CHUNK, hole: true },
      ]);
      expect(await ops.extents(handle.fd, 2 * MiB, 100, 1)).toEqual([{ length: 100, hole: true }]);
      expect(await ops.extents(handle.fd, 4 * MiB, 1 * MiB, 8)).toEqual([
        { length: 1 * MiB, hole: true },
      ]);
      expect(await ops.extents(handle.fd, 0, 0, 8)).toEqual([]);
    });

    it("seekData and seekHole find the boundaries, -1 when there is no more data", async () => {
      expect(await ops.seekData(handle.fd, 0)).toBe(0);
      expect(await ops.seekHole(handle.fd, 0)).toBe(CHUNK);
      expect(await ops.seekData(handle.fd, CHUNK)).toBe(1 * MiB);
      expect(await ops.seekHole(handle.fd, 1 * MiB)).toBe(1 * MiB + CHUNK);
      expect(await ops.seekHole(handle.fd, 2 * MiB)).toBe(2 * MiB);
      expect(await ops.seekData(handle.fd, 1 * MiB + CHUNK)).toBe(-1);
      expect(await ops.seekHole(handle.fd, 4 * MiB)).toBe(-1);
    });

    it("runs many requests concurrently and settles each with its own answer", async () => {
      const offsets = Array.from({ length: 64 }, (_, i) => (i % 4) * CHUNK);
      const answers = await Promise.all(offsets.map((o) => ops.seekHole(handle.fd, o)));
      expect(answers).toEqual(offsets.map((o) => (o === 0 ? CHUNK : o)));
    });
  });

  it("rejects with a Node-style error that carries code, errno and syscall", async () => {
    const handle = await sparseFile("ro.img", 1 * MiB, [0]);
    const readOnly = await open(join(dir, "ro.img"), "r");
    try {
      const err: unknown = await ops.punchHole(readOnly.fd, 0, CHUNK).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      expect(err).toMatchObject({
        code: "EBADF",
        errno: -osConstants.errno.EBADF,
        syscall: "fallocate",
        message: expect.stringMatching(/^EBADF: .*, fallocate$/) as unknown,
      });
      const notBlock: unknown = await ops.blockDeviceSize(handle.fd).catch((e: unknown) => e);
      expect(notBlock).toMatchObject({ code: "ENOTTY", syscall: "ioctl" });
      expect(isNotSupported(notBlock)).toBe(true);
    } finally {
      await readOnly.close();
      await handle.close();
    }
  });

  it("throws at once for arguments that are not non-negative safe integers", () => {
    const call = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        return (err as { code?: unknown }).code;
      }
      return "no error";
    };
    expect(call(() => ops.punchHole(3, -1, 10))).toBe("ERR_OUT_OF_RANGE");
    expect(call(() => ops.punchHole(3, 1.5, 10))).toBe("ERR_OUT_OF_RANGE");
    expect(call(() => ops.punchHole(3, 0, 2 ** 53))).toBe("ERR_OUT_OF_RANGE");
    expect(call(() => ops.seekData(-1, 0))).toBe("ERR_OUT_OF_RANGE");
    expect(call(() => ops.extents(3, 0, 10, 0))).toBe("ERR_OUT_OF_RANGE");
    const untyped = ops as unknown as Record<string, (...args: unknown[]) => unknown>;
    expect(call(() => untyped.zeroRange?.(3, "0", 10))).toBe("ERR_INVALID_ARG_TYPE");
    expect(call(() => untyped.blkDiscard?.(3, 0))).toBe("ERR_MISSING_ARGS");
  });
});

describe.skipIf(!status.available)("native block-device operations on a loop device", () => {
  const ops = status.ops as NativeFileOps;
  const SIZE = 8 * MiB;
  let device = "";
  let backing = "";

  beforeAll(async () => {
    backing = join(dir, "loop-backing.img");
    await writeFile(backing, Buffer.alloc(SIZE, 0xcd));
    const attached = await execa("losetup", ["-f", "--show", backing], { reject: false });
    if (attached.exitCode === 0) {
      device = attached.stdout.trim();
      return;
    }
    const why = `losetup failed: ${attached.stderr || attached.message}`;
    if (IN_CI) throw new Error(`loop device required under CI: ${why}`);
    console.warn(`\n*** SKIPPING loop device tests: ${why} ***\n`);
  });
  afterAll(async () => {
    if (device) await execa("losetup", ["-d", device], { reject: false });
  });

  it("blockDeviceSize, blkZeroOut and blkDiscard act on the device", async (ctx) => {
    if (!device) return ctx.skip();
    const handle = await open(device, "r+");
    try {
      expect(await ops.blockDeviceSize(handle.fd)).toBe(SIZE);

      await ops.blkZeroOut(handle.fd, 1 * MiB, 1 * MiB);
      expect((await readAt(handle, 1 * MiB, 1 * MiB)).every((b) => b === 0)).toBe(true);
      expect((await readAt(handle, 0, 1 * MiB)).every((b) => b === 0xcd)).toBe(true);

      const blocksBefore = (await stat(backing)).blocks;
      await ops.blkDiscard(handle.fd, 4 * MiB, 2 * MiB);
      await handle.sync();
      expect((await readAt(handle, 4 * MiB, 2 * MiB)).every((b) => b === 0)).toBe(true);
      expect((await readAt(handle, 6 * MiB, 2 * MiB)).every((b) => b === 0xcd)).toBe(true);
      // The loop driver turns a discard into a hole in its backing file.
      expect((await stat(backing)).blocks).toBeLessThan(blocksBefore);

      const unaligned: unknown = await ops.blkZeroOut(handle.fd, 1, 511).catch((e: unknown) => e);
      expect(unaligned).toMatchObject({ code: "EINVAL", syscall: "ioctl" });
    } finally {
      await handle.close();
    }
  });
});

describe("fallback when the addon is not built", () => {
  it("reports unavailable with one warning when no candidate exists", () => {
    const missing = loadNativeFileOps([join(dir, "nowhere", "fileops.node")]);
    expect(missing.available).toBe(false);
    expect(missing.ops).toBeUndefined();
    if (missing.available) return;
    expect(missing.warning).toMatch(/native file operations unavailable/);
    expect(missing.warning).toMatch(/npm run build:native/);
    expect(missing.cause).toMatchObject({ code: "MODULE_NOT_FOUND" });
  });

  it("reports a file that loads but is not the addon, over a missing one", async () => {
    const wrong = join(dir, "wrong-exports.cjs");
    await writeFile(wrong, "module.exports = { punchHole() {} };\n");
    const result = loadNativeFileOps([wrong, join(dir, "nowhere.node")]);
    expect(result.available).toBe(false);
    if (!result.available) expect(result.warning).toMatch(/does not export .*blkZeroOut/);
  });

  it("reports a corrupt binary instead of skipping it silently", async () => {
    const corrupt = join(dir, "corrupt.node");
    await writeFile(corrupt, "not an ELF file");
    const result = loadNativeFileOps([join(dir, "nowhere.node"), corrupt]);
    expect(result.available).toBe(false);
    if (!result.available) expect(result.warning).toMatch(/corrupt\.node|ELF|header/i);
  });

  it("loads the first candidate that works and shares one result per process", () => {
    expect(nativeFileOps()).toBe(status);
    if (!status.available) return;
    const found = loadNativeFileOps([join(dir, "nowhere.node"), status.path]);
    expect(found.available).toBe(true);
    if (found.available) expect(found.path).toBe(status.path);
  });
});
