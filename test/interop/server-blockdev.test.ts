// Serving a block device: a loop device over a sparse file stands in for a disk.
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it, onTestFinished } from "vitest";
import { createSparseFile, serveForTest, serverKind, tempDirForTest } from "../helpers/server.js";
import { describeRun, requireRootDevices, requireTools, run, runOk } from "../helpers/tools.js";

const ready =
  requireTools("losetup", "nbdinfo", "nbdcopy", "cmp") && requireRootDevices("/dev/loop-control");
const MiB = 1024 * 1024;

describe.skipIf(!ready)(`block device export on ${serverKind()}`, () => {
  it("serves /dev/loopN with its size and round-trips data", async () => {
    const dir = await tempDirForTest();
    const backing = join(dir, "backing.img");
    const src = join(dir, "src.bin");
    const back = join(dir, "back.bin");
    await createSparseFile(backing, 64 * MiB);
    await writeFile(src, randomBytes(64 * MiB));

    const attached = await runOk("losetup", ["-f", "--show", backing]);
    const device = attached.stdout.trim();
    expect(device).toMatch(/^\/dev\/loop\d+$/);
    // Registered before the server, so it runs after the server has stopped.
    onTestFinished(async () => {
      const detached = await run("losetup", ["-d", device]);
      expect(detached.exitCode, describeRun(detached)).toBe(0);
    });

    const server = await serveForTest({ image: device });
    const info = await runOk("nbdinfo", ["--size", server.uri]);
    expect(Number(info.stdout.trim())).toBe(64 * MiB);

    await runOk("nbdcopy", ["--flush", src, server.uri]);
    await runOk("nbdcopy", [server.uri, back]);
    const same = await run("cmp", [src, back]);
    expect(same.exitCode, describeRun(same)).toBe(0);

    // The bytes went through the device to its backing file.
    expect((await server.stop()).exitCode).toBe(0);
    const onDisk = await run("cmp", [src, device]);
    expect(onDisk.exitCode, describeRun(onDisk)).toBe(0);
  });
});
