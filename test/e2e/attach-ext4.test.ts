// `peercopy attach` and `peercopy detach` on the nbdfuse path (this kernel may
// have no nbd module): the export becomes a loop device that carries ext4, the
// attachment survives the attaching process, and detach undoes every step from
// a fresh process: it refuses while mounted, then leaves no loop device, no
// FUSE mount and no nbdfuse behind.
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createSparseFile,
  runPeercopy,
  startServer,
  type RunningServer,
} from "../helpers/server.js";
import { isMounted, mountToolsReady, sha256 } from "../helpers/mount.js";
import { describeRun, run, runOk } from "../helpers/tools.js";

const ready = mountToolsReady();

const MiB = 1024 * 1024;

async function loopBacking(device: string): Promise<string | undefined> {
  const name = device.replace("/dev/", "");
  return readFile(`/sys/block/${name}/loop/backing_file`, "utf8").then(
    (s) => s.trim(),
    () => undefined,
  );
}

async function processRuns(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  return state !== "" && state !== "Z";
}

interface Record {
  readonly method: string;
  readonly device: string;
  readonly fuseFile: string;
  readonly nbdfusePid: number;
}

describe.skipIf(!ready)("peercopy attach / detach through nbdfuse and a loop device", () => {
  let dir = "";
  let runtime = "";
  let mnt = "";
  let server: RunningServer | undefined;
  let device = "";
  const files = new Map<string, string>();

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "peercopy-attach-"));
    runtime = join(dir, "run");
    mnt = join(dir, "mnt");
    await mkdir(mnt);
    const image = join(dir, "disk.img");
    await createSparseFile(image, 96 * MiB);
    server = await startServer({ image });
  });

  afterAll(async () => {
    if (await isMounted(mnt)) await run("umount", ["-l", mnt]);
    if (device !== "") await runPeercopy(["detach", device, "--runtime-dir", runtime]);
    await server?.stop();
    if (dir !== "") await rm(dir, { recursive: true, force: true });
  });

  async function attach(): Promise<Record> {
    if (server === undefined) throw new Error("no server");
    const result = await runPeercopy(
      ["attach", server.uri, "--method", "fuse", "--runtime-dir", runtime],
      30_000,
    );
    expect(result.exitCode, describeRun(result)).toBe(0);
    device = result.stdout.trim();
    expect(device).toMatch(/^\/dev\/loop\d+$/);
    const name = device.replace("/dev/", "");
    const record = JSON.parse(await readFile(join(runtime, `${name}.json`), "utf8")) as Record;
    expect(record.method).toBe("fuse");
    expect(await loopBacking(device)).toBe(record.fuseFile);
    expect(await processRuns(record.nbdfusePid)).toBe(true);
    return record;
  }

  async function detachAndCheck(record: Record): Promise<void> {
    const result = await runPeercopy(["detach", device, "--runtime-dir", runtime], 30_000);
    expect(result.exitCode, describeRun(result)).toBe(0);
    expect(await loopBacking(device)).toBeUndefined();
    expect(await isMounted(record.fuseFile)).toBe(false);
    expect(await processRuns(record.nbdfusePid)).toBe(false);
    expect(await readdir(runtime)).toEqual([]);
    device = "";
  }

  it("attaches, carries ext4, refuses to detach while mounted, detaches cleanly", async () => {
    const record = await attach();
    const list = await runPeercopy(["detach", "--list", "--runtime-dir", runtime]);
    expect(list.stdout).toContain(`${device}\tfuse\t`);
    await runOk("mkfs.ext4", ["-q", device], { timeoutMs: 60_000 });
    await runOk("mount", ["-t", "ext4", device, mnt]);
    for (let i = 0; i < 30; i++) {
      const data = randomBytes(4096 + i * 7919);
      await writeFile(join(mnt, `f${i}.bin`), data);
      files.set(`f${i}.bin`, sha256(data));
    }
    const refused = await runPeercopy(["detach", device, "--runtime-dir", runtime]);
    expect(refused.exitCode, describeRun(refused)).toBe(1);
    expect(refused.stderr).toContain(`mounted on ${mnt}`);
    expect(await loopBacking(device)).toBe(record.fuseFile);
    await runOk("umount", [mnt]);
    await detachAndCheck(record);
  });

  it("re-attaches the same export: e2fsck is clean and every file is there", async () => {
    expect(files.size, "the first test wrote no files").toBe(30);
    const record = await attach();
    const fsck = await run("e2fsck", ["-fn", device]);
    expect(fsck.exitCode, describeRun(fsck)).toBe(0);
    await runOk("mount", ["-t", "ext4", "-o", "ro", device, mnt]);
    for (const [name, digest] of files) {
      expect(sha256(await readFile(join(mnt, name))), name).toBe(digest);
    }
    await runOk("umount", [mnt]);
    await detachAndCheck(record);
  });

  it("names what is wrong with a bad URI, an unknown device, or an unreachable server", async () => {
    const badUri = await runPeercopy(["attach", "http://x/", "--runtime-dir", runtime]);
    expect(badUri.exitCode).toBe(2);
    expect(badUri.stderr).toContain("unknown scheme");
    const unknown = await runPeercopy(["detach", "/dev/loop999", "--runtime-dir", runtime]);
    expect(unknown.exitCode).toBe(1);
    expect(unknown.stderr).toContain("was not attached by peercopy attach");
    const refused = await runPeercopy(
      ["attach", "nbd://127.0.0.1:1/", "--method", "fuse", "--runtime-dir", runtime],
      30_000,
    );
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toContain("nbdfuse could not present");
    expect(existsSync(runtime) ? await readdir(runtime) : []).toEqual([]);
  });
});
