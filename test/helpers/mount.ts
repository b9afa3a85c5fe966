// Mounting an NBD export as a real disk for the filesystem tests: nbdfuse
// presents the export as a file, a loop device makes it a block device, and
// the kernel's ext4 mounts it. Every step registers its undo on a Teardown.
import { createHash } from "node:crypto";
import { readFile, stat, writeFile } from "node:fs/promises";
import { execa, type ResultPromise } from "execa";
import { sleep } from "./controllers.js";
import { describeRun, requireRootDevices, requireTools, run, runOk } from "./tools.js";

/** True when the tools and devices for nbdfuse + loop + ext4 are here (or CI fails loudly). */
export function mountToolsReady(): boolean {
  return (
    requireTools("nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount") &&
    requireRootDevices("/dev/fuse", "/dev/loop-control")
  );
}

export async function isMounted(path: string): Promise<boolean> {
  const mounts = await readFile("/proc/self/mounts", "utf8");
  return mounts.split("\n").some((line) => line.split(" ")[1] === path);
}

export function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Undo steps run in reverse order; every one is tried and failures are collected. */
export class Teardown {
  private readonly steps: { what: string; undo: () => Promise<unknown> }[] = [];
  push(what: string, undo: () => Promise<unknown>): void {
    this.steps.push({ what, undo });
  }
  /** Run the most recent step now (the normal path), leaving the rest. */
  async popNow(): Promise<void> {
    const step = this.steps.pop();
    if (step !== undefined) await step.undo();
  }
  async runAll(): Promise<string[]> {
    const errors: string[] = [];
    for (let step = this.steps.pop(); step !== undefined; step = this.steps.pop()) {
      try {
        await step.undo();
      } catch (err) {
        errors.push(`${step.what}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    return errors;
  }
}

export async function umount(path: string): Promise<void> {
  if (!(await isMounted(path))) return;
  const result = await run("umount", [path]);
  if (result.exitCode !== 0) await runOk("umount", ["-l", path]);
}

export async function unmountFuse(file: string, fuse: ResultPromise): Promise<void> {
  // The loop device lets go of the file asynchronously: retry briefly (5 s).
  for (let attempt = 0; await isMounted(file); attempt++) {
    const result = await run("fusermount3", ["-u", file]);
    if (result.exitCode === 0) break;
    if (attempt >= 20) {
      // The server behind it is gone (a failover test killed it): detach lazily.
      const lazy = await run("fusermount3", ["-uz", file]);
      if (lazy.exitCode === 0) break;
      throw new Error(describeRun(result));
    }
    await sleep(250);
  }
  const timer = setTimeout(() => fuse.kill("SIGKILL"), 10_000);
  await fuse;
  clearTimeout(timer);
}

/**
 * Presents `uri` as a block device: nbdfuse over `fuseFile`, then a loop device.
 * Pushes both undo steps (fusermount3 -u, losetup -d) on `teardown`; returns /dev/loopN.
 */
export async function attachExport(
  uri: string,
  fuseFile: string,
  size: number,
  teardown: Teardown,
): Promise<string> {
  await writeFile(fuseFile, ""); // nbdfuse mounts over a regular file
  const fuse = execa("nbdfuse", [fuseFile, uri], { reject: false, stdin: "ignore" });
  let ended = false;
  void fuse.then(() => (ended = true));
  teardown.push(`nbdfuse ${uri}`, () => unmountFuse(fuseFile, fuse));
  // The FUSE file takes a moment to show the export's size. Bounded: 20 s.
  const deadline = Date.now() + 20_000;
  while ((await stat(fuseFile)).size !== size) {
    if (ended || Date.now() > deadline)
      throw new Error(`nbdfuse did not present ${fuseFile}: ${String((await fuse).stderr)}`);
    await sleep(100);
  }
  const loop = (await runOk("losetup", ["-f", "--show", fuseFile])).stdout.trim();
  if (!/^\/dev\/loop\d+$/.test(loop)) throw new Error(`losetup printed ${loop}`);
  teardown.push(`losetup -d ${loop}`, () => runOk("losetup", ["-d", loop]));
  return loop;
}
