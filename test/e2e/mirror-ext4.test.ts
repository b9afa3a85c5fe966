// A real filesystem through a mirroring pair: the kernel's ext4 writes to the
// primary (sync mode) through nbdfuse and a loop device; after a clean stop of
// both controllers the secondary's image is byte-identical to the primary's,
// passes e2fsck, and holds every file intact.
import { randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  cleanupControllers,
  controllerTempDir,
  startPair,
  type Primary,
  type Secondary,
} from "../helpers/controllers.js";
import {
  attachExport,
  isMounted,
  mountToolsReady,
  sha256,
  Teardown,
  umount,
} from "../helpers/mount.js";
import { describeRun, requireTools, run, runOk } from "../helpers/tools.js";

const ready = mountToolsReady() && requireTools("cmp");

const MiB = 1024 * 1024;
const IMAGE_SIZE = 256 * MiB;

describe.skipIf(!ready)("ext4 through a sync mirror (peercopy secondary)", () => {
  const teardown = new Teardown();
  const files = new Map<string, string>();
  let dir = "";
  let primary: Primary | undefined;
  let secondary: Secondary | undefined;

  beforeAll(async () => {
    dir = await controllerTempDir();
    ({ primary, secondary } = await startPair(dir, { mode: "sync", keepAfterTest: true }));
  });

  afterAll(async () => {
    const errors = await teardown.runAll();
    for (const path of [join(dir, "mnt"), join(dir, "disk"), join(dir, "check")])
      if (dir !== "" && (await isMounted(path))) errors.push(`${path} is still mounted`);
    await cleanupControllers();
    expect(errors).toEqual([]);
  });

  function pair(): { p: Primary; s: Secondary } {
    if (primary === undefined || secondary === undefined) throw new Error("beforeAll failed");
    return { p: primary, s: secondary };
  }

  it("mkfs, mount and write files on the primary; fsck is clean", async () => {
    const { p } = pair();
    const mnt = join(dir, "mnt");
    await mkdir(mnt);
    const loop = await attachExport(p.uri, join(dir, "disk"), IMAGE_SIZE, teardown);

    await runOk("mkfs.ext4", ["-q", loop], { timeoutMs: 60_000 });
    await runOk("mount", ["-t", "ext4", loop, mnt]);
    teardown.push("umount", () => umount(mnt));
    await mkdir(join(mnt, "many"));
    const sizes: [string, number][] = [
      ["small.bin", 1000],
      ["one-mib.bin", MiB],
      ["odd.bin", 7 * MiB + 123],
    ];
    for (let i = 0; i < 40; i++) sizes.push([join("many", `f${i}.bin`), 512 + i * 997]);
    for (const [name, size] of sizes) {
      const data = randomBytes(size);
      await writeFile(join(mnt, name), data);
      files.set(name, sha256(data));
    }
    await runOk("sync", []);
    await teardown.popNow(); // umount
    expect(await isMounted(mnt)).toBe(false);
    const fsck = await run("e2fsck", ["-fn", loop]);
    expect(fsck.exitCode, describeRun(fsck)).toBe(0);
    expect((await p.status()).pairState).toBe("full-duplex");
  });

  it("detaches, then both controllers stop cleanly on SIGTERM", async () => {
    const { p, s } = pair();
    expect(files.size, "no files were written").toBeGreaterThan(0);
    await teardown.popNow(); // losetup -d
    await teardown.popNow(); // fusermount3 -u
    expect(await isMounted(join(dir, "disk"))).toBe(false);
    const status = await p.status();
    expect(status).toMatchObject({ pairState: "full-duplex", outOfSync: { tracks: 0 } });
    await p.stopClean();
    await s.stopClean();
  });

  it("the secondary image is identical to the primary's and fsck-clean as a file", async () => {
    const { p, s } = pair();
    expect(p.exited && s.exited, "the controllers are still running").toBe(true);
    const same = await run("cmp", [p.image, s.image], { timeoutMs: 60_000 });
    expect(same.exitCode, describeRun(same)).toBe(0);
    const fsck = await run("e2fsck", ["-fn", s.image]);
    expect(fsck.exitCode, describeRun(fsck)).toBe(0);
  });

  it("every file reads back intact from the secondary image", async () => {
    const { s } = pair();
    expect(files.size).toBeGreaterThan(0);
    const check = join(dir, "check");
    await mkdir(check);
    const loop = (await runOk("losetup", ["-r", "-f", "--show", s.image])).stdout.trim();
    teardown.push("losetup -d (secondary)", () => runOk("losetup", ["-d", loop]));
    await runOk("mount", ["-t", "ext4", "-o", "ro,noload", loop, check]);
    teardown.push("umount (secondary)", () => umount(check));
    for (const [name, digest] of files)
      expect(sha256(await readFile(join(check, name))), name).toBe(digest);
    await teardown.popNow();
    await teardown.popNow();
  });
});
