// A real filesystem on the server under test: nbdfuse turns the export into a
// file, a loop device turns that into a disk, and the kernel's ext4 does the I/O.
// Files written through the mount survive umount, fsck, and a server restart.
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa, type ResultPromise } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createSparseFile,
  serverKind,
  startServer,
  type RunningServer,
} from "../helpers/server.js";
import { describeRun, requireRootDevices, requireTools, run, runOk } from "../helpers/tools.js";

const ready =
  requireTools("nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount") &&
  requireRootDevices("/dev/fuse", "/dev/loop-control");

const MiB = 1024 * 1024;
const IMAGE_SIZE = 128 * MiB;

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

async function isMounted(path: string): Promise<boolean> {
  const mounts = await readFile("/proc/self/mounts", "utf8");
  return mounts.split("\n").some((line) => line.split(" ")[1] === path);
}

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Everything between the image and the mounted filesystem, torn down in reverse. */
class DiskStack {
  server: RunningServer | undefined;
  fuse: ResultPromise | undefined;
  loop: string | undefined;
  mounted = false;

  constructor(
    readonly image: string,
    readonly fuseFile: string,
    readonly mountPoint: string,
  ) {}

  async attach(): Promise<string> {
    this.server = await startServer({ image: this.image });
    // nbdfuse mounts over a regular file ("naked" mountpoint).
    await writeFile(this.fuseFile, "");
    const fuse = execa("nbdfuse", [this.fuseFile, this.server.uri], {
      reject: false,
      stdin: "ignore",
    });
    this.fuse = fuse;
    let ended = false;
    void fuse.then(() => {
      ended = true;
    });
    // The FUSE file takes a moment to appear with the export's size. Bounded: 20 s.
    const deadline = Date.now() + 20_000;
    while ((await stat(this.fuseFile)).size !== IMAGE_SIZE) {
      if (ended || Date.now() > deadline) {
        const result = await Promise.race([fuse, sleep(1000).then(() => undefined)]);
        throw new Error(
          `nbdfuse did not present ${this.fuseFile}: ${result === undefined ? "timed out" : String(result.stderr)}`,
        );
      }
      await sleep(100);
    }
    const attached = await runOk("losetup", ["-f", "--show", this.fuseFile]);
    this.loop = attached.stdout.trim();
    expect(this.loop).toMatch(/^\/dev\/loop\d+$/);
    return this.loop;
  }

  async mount(): Promise<void> {
    if (this.loop === undefined) throw new Error("mount before attach");
    await runOk("mount", ["-t", "ext4", this.loop, this.mountPoint]);
    this.mounted = true;
  }

  async umount(): Promise<void> {
    if (!this.mounted) return;
    await runOk("umount", [this.mountPoint]);
    this.mounted = false;
  }

  /** Undo whatever is set up; every step is tried, errors are collected. */
  async detach(): Promise<string[]> {
    const errors: string[] = [];
    const step = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        errors.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
      }
    };
    if (this.mounted || (await isMounted(this.mountPoint))) {
      await step("umount", async () => {
        const result = await run("umount", [this.mountPoint]);
        if (result.exitCode !== 0) await runOk("umount", ["-l", this.mountPoint]);
        this.mounted = false;
      });
    }
    const loop = this.loop;
    if (loop !== undefined) {
      await step("losetup -d", async () => {
        await runOk("losetup", ["-d", loop]);
        this.loop = undefined;
      });
    }
    if (this.fuse !== undefined) {
      const fuse = this.fuse;
      await step("fusermount3 -u", async () => {
        // The loop device lets go of the file asynchronously; retry briefly.
        for (let attempt = 0; ; attempt++) {
          const result = await run("fusermount3", ["-u", this.fuseFile]);
          if (result.exitCode === 0 || !(await isMounted(this.fuseFile))) break;
          if (attempt >= 20) throw new Error(describeRun(result));
          await sleep(250);
        }
        const timer = setTimeout(() => fuse.kill("SIGKILL"), 10_000);
        await fuse;
        clearTimeout(timer);
        this.fuse = undefined;
      });
    }
    if (this.server !== undefined) {
      const server = this.server;
      await step("stop server", async () => {
        const exit = await server.stop();
        if (exit.exitCode !== 0) {
          throw new Error(`exit ${String(exit.exitCode)}\n${server.log().slice(-4000)}`);
        }
        this.server = undefined;
      });
    }
    return errors;
  }
}

describe.skipIf(!ready)(`ext4 over nbdfuse and a loop device on ${serverKind()}`, () => {
  let dir = "";
  let stack: DiskStack | undefined;
  const files = new Map<string, string>();

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "peercopy-ext4-"));
    const image = join(dir, "disk.img");
    await createSparseFile(image, IMAGE_SIZE);
    await mkdir(join(dir, "mnt"));
    stack = new DiskStack(image, join(dir, "disk"), join(dir, "mnt"));
  });

  afterAll(async () => {
    const errors = stack === undefined ? [] : await stack.detach();
    const leftovers = stack === undefined ? [] : [stack.mountPoint, stack.fuseFile];
    for (const path of leftovers) {
      if (await isMounted(path)) errors.push(`${path} is still mounted`);
    }
    if (errors.length === 0 && dir !== "") await rm(dir, { recursive: true, force: true });
    expect(errors).toEqual([]);
  });

  function theStack(): DiskStack {
    if (stack === undefined) throw new Error("beforeAll did not run");
    return stack;
  }

  it("makes an ext4 filesystem and writes files through the mount", async () => {
    const s = theStack();
    const loop = await s.attach();
    await runOk("mkfs.ext4", ["-q", loop], { timeoutMs: 60_000 });
    await s.mount();
    await mkdir(join(s.mountPoint, "many"));
    const sizes: [string, number][] = [
      ["small.bin", 1000],
      ["one-mib.bin", MiB],
      ["odd.bin", 7 * MiB + 123],
    ];
    for (let i = 0; i < 40; i++) sizes.push([join("many", `f${i}.bin`), 512 + i * 97]);
    for (const [name, size] of sizes) {
      const data = randomBytes(size);
      await writeFile(join(s.mountPoint, name), data);
      files.set(name, sha256(data));
    }
    await s.umount();
  });

  it("passes e2fsck -fn after umount", async () => {
    const s = theStack();
    if (s.loop === undefined) throw new Error("not attached");
    expect(files.size, "no files were written").toBeGreaterThan(0);
    expect(await isMounted(s.mountPoint)).toBe(false);
    const fsck = await run("e2fsck", ["-fn", s.loop]);
    expect(fsck.exitCode, describeRun(fsck)).toBe(0);
  });

  it("reads every file back intact after a remount", async () => {
    const s = theStack();
    expect(files.size).toBeGreaterThan(0);
    await s.mount();
    for (const [name, digest] of files) {
      expect(sha256(await readFile(join(s.mountPoint, name))), name).toBe(digest);
    }
    await s.umount();
  });

  it("keeps the filesystem across a server restart", async () => {
    const s = theStack();
    expect(files.size, "no files were written").toBeGreaterThan(0);
    expect(await s.detach()).toEqual([]);
    expect(existsSync(s.image)).toBe(true);
    const loop = await s.attach();
    const fsck = await run("e2fsck", ["-fn", loop]);
    expect(fsck.exitCode, describeRun(fsck)).toBe(0);
    await s.mount();
    for (const [name, digest] of files) {
      expect(sha256(await readFile(join(s.mountPoint, name))), name).toBe(digest);
    }
    await s.umount();
  });
});
