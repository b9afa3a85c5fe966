// openMetadata on real files: creation, the open errors an operator sees, and a
// clean close followed by a reopen.
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  MetaFlag,
  MetaRole,
  MetadataError,
  createMemoryMetadata,
  newGeneration,
  openMetadata,
} from "../../src/metadata/index.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

let dir = "";
let n = 0;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "peercopy-metadata-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
const fresh = (): string => join(dir, `image-${n++}.img.pcmeta`);

async function openError(p: Promise<unknown>): Promise<MetadataError> {
  const err: unknown = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(MetadataError);
  return err as MetadataError;
}

describe("openMetadata", () => {
  it("creates a missing file fresh, clean-flag cleared once open, bitmap empty", async () => {
    const path = fresh();
    const m = await openMetadata(path, {
      volumeSize: GiB,
      trackSize: 64 * KiB,
      create: "if-missing",
      role: MetaRole.SECONDARY,
    });
    expect(m.path).toBe(path);
    expect(m.trackCount).toBe(16384);
    expect(m.outOfSyncTracks).toBe(0);
    expect(m.header.role).toBe(MetaRole.SECONDARY);
    expect(m.header.pairId).toBe("");
    expect(m.header.generations.current).not.toBe(0n);
    expect(m.header.flags & MetaFlag.FRESH).toBe(MetaFlag.FRESH);
    expect(m.header.flags & MetaFlag.CLEAN).toBe(0);
    expect(m.recovered).toEqual({ crashed: false, alTracks: 0, bitmapTracks: 0 });
    await m.close();
  });

  it("clean close, then reopen: not crashed, only the bitmap's bits, AL empty", async () => {
    const path = fresh();
    const o = {
      volumeSize: 64 * MiB,
      trackSize: 64 * KiB,
      extentSize: 4 * MiB,
      create: "if-missing",
    } as const;
    const m = await openMetadata(path, o);
    m.markStale(3, 2);
    m.markStale(1000, 1);
    await m.beginWrite(200, 4); // extent 3 becomes hot
    m.endWrite(200, 4);
    const pairId = "0123456789abcdef0123456789abcdef";
    const current = newGeneration();
    await m.updateHeader({ pairId, generations: { current, bitmap: 7n, history: [5n, 3n] } });
    m.clearStale(4);
    await m.close();

    const again = await openMetadata(path, { ...o, create: "never" });
    expect(again.recovered).toEqual({ crashed: false, alTracks: 0, bitmapTracks: 2 });
    expect([again.nextStale(0), again.nextStale(4), again.nextStale(1001)]).toEqual([3, 1000, -1]);
    expect(again.header.pairId).toBe(pairId);
    expect(again.header.generations).toEqual({ current, bitmap: 7n, history: [5n, 3n] });
    await again.close(false);

    // Closed without the clean flag: the logged extents count as out of sync.
    const crashed = await openMetadata(path, { ...o, create: "never" });
    expect(crashed.recovered.crashed).toBe(true);
    await crashed.close();
  });

  it("an unclean close replays the activity log", async () => {
    const path = fresh();
    const o = {
      volumeSize: 64 * MiB,
      trackSize: 64 * KiB,
      extentSize: 4 * MiB,
      create: "if-missing",
    } as const;
    const m = await openMetadata(path, o);
    await m.beginWrite(130, 1); // extent 2: tracks 128..191
    await m.close(false);
    const again = await openMetadata(path, o);
    expect(again.recovered).toEqual({ crashed: true, alTracks: 64, bitmapTracks: 0 });
    expect(again.nextStale(0)).toBe(128);
    expect(again.outOfSyncTracks).toBe(64);
    await again.close();
  });

  it("refuses a file for a different volume size, naming both and the way out", async () => {
    const path = fresh();
    await (
      await openMetadata(path, { volumeSize: GiB, trackSize: 64 * KiB, create: "if-missing" })
    ).close();
    const before = await readFile(path);
    const err = await openError(
      openMetadata(path, { volumeSize: 2 * GiB, trackSize: 64 * KiB, create: "if-missing" }),
    );
    expect(err.code).toBe("EMETA_MISMATCH");
    expect(err.message).toContain(
      `metadata ${path} records a 1073741824-byte volume with 65536-byte tracks; this volume is 2147483648 bytes`,
    );
    expect(err.message).toContain("--init-metadata");
    expect(await readFile(path)).toEqual(before); // never overwritten without "overwrite"
  });

  it("refuses a file for a different track size", async () => {
    const path = fresh();
    await (
      await openMetadata(path, { volumeSize: GiB, trackSize: 64 * KiB, create: "if-missing" })
    ).close();
    const err = await openError(
      openMetadata(path, { volumeSize: GiB, trackSize: 128 * KiB, create: "never" }),
    );
    expect(err.code).toBe("EMETA_MISMATCH");
    expect(err.message).toContain(path);
    expect(err.message).toContain("131072-byte tracks");
  });

  it("reports both header slots corrupt, and overwrite replaces the file", async () => {
    const path = fresh();
    const o = { volumeSize: GiB, trackSize: 64 * KiB, create: "if-missing" } as const;
    await (await openMetadata(path, o)).close();
    const bytes = await readFile(path);
    bytes[100] = (bytes[100] as number) ^ 1; // slot A: checksum
    bytes.fill(0, 4096, 8192); // slot B: magic
    await writeFile(path, bytes);
    const err = await openError(openMetadata(path, o));
    expect(err.code).toBe("EMETA_CORRUPT");
    expect(err.message).toContain(path);
    expect(err.message).toContain("--init-metadata");
    const m = await openMetadata(path, { ...o, create: "overwrite" });
    expect(m.header.flags & MetaFlag.FRESH).toBe(MetaFlag.FRESH);
    await m.close();
  });

  it("reports an unknown format version", async () => {
    const path = fresh();
    const o = { volumeSize: GiB, trackSize: 64 * KiB, create: "if-missing" } as const;
    await (await openMetadata(path, o)).close();
    const bytes = await readFile(path);
    bytes.writeUInt32LE(9, 8);
    bytes.writeUInt32LE(9, 4096 + 8);
    await writeFile(path, bytes);
    const err = await openError(openMetadata(path, o));
    expect(err.code).toBe("EMETA_VERSION");
    expect(err.message).toContain("version 9");
  });

  it("does not create a missing file with create never", async () => {
    const path = fresh();
    const err = await openError(
      openMetadata(path, { volumeSize: GiB, trackSize: 64 * KiB, create: "never" }),
    );
    expect(err.code).toBe("EMETA_MISSING");
    expect(err.message).toContain(path);
    await expect(readFile(path)).rejects.toThrow(/ENOENT/);
  });
});

describe("createMemoryMetadata", () => {
  it("keeps bits and header in memory and never asks for write intent", async () => {
    const m = createMemoryMetadata({ volumeSize: 10 * 64 * KiB + 1, trackSize: 64 * KiB });
    expect(m.path).toBeUndefined();
    expect(m.trackCount).toBe(11);
    m.markStale(9, 2);
    expect(m.outOfSyncBytes).toBe(64 * KiB + 1);
    expect(m.beginWrite(0, 11)).toBeUndefined();
    m.endWrite(0, 11);
    await m.updateHeader({ role: MetaRole.SECONDARY });
    expect(m.header.role).toBe(MetaRole.SECONDARY);
    await m.close();
  });
});

describe("one controller per metadata file", () => {
  it("a second open while the first is open is refused, naming the owner; a dead owner's lock is taken over", async () => {
    const dir = await mkdtemp(join(tmpdir(), "peercopy-meta-lock-"));
    const path = join(dir, "v.pcmeta");
    const o = { volumeSize: 64 * 1024 * 1024, trackSize: 65536, create: "if-missing" } as const;
    const first = await openMetadata(path, o);
    const refused = await openMetadata(path, o).then(
      () => undefined,
      (err: unknown) => err as MetadataError,
    );
    expect(refused?.code).toBe("EMETA_IN_USE");
    expect(refused?.message).toContain(`in use by process ${process.pid}`);
    await first.close();
    // A lock left by a process that no longer runs (as after SIGKILL).
    const dead = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"]);
    await writeFile(`${path}.lock`, `${dead.stdout.toString()}\n`);
    const again = await openMetadata(path, o);
    expect((await readFile(`${path}.lock`, "utf8")).trim()).toBe(String(process.pid));
    await again.close();
    await expect(readFile(`${path}.lock`)).rejects.toMatchObject({ code: "ENOENT" });
  });
});
