// Failover and failback with a real filesystem: ext4 mounted through the
// primary (nbdfuse + loop), files written and synced, a writer still running
// when the primary is SIGKILLed. The secondary is promoted, its export mounted
// (the journal replays), every synced file checked; new files written; e2fsck
// clean. Then the old primary's image returns as the secondary of the new
// primary, the resync copies the union of both sides' marks, and a planned
// failover (demote, promote) gives the roles back. The images are compared
// after each step.
import { randomBytes } from "node:crypto";
import { mkdir, open, readFile } from "node:fs/promises";
import { join } from "node:path";
import { execa, type ResultPromise } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  cleanupControllers,
  compareImages,
  controllerTempDir,
  sleep,
  startPrimary,
  startSecondary,
  type Primary,
  type PrimaryStatus,
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
import { runPeercopy } from "../helpers/server.js";
import { describeRun, requireTools, run, runOk } from "../helpers/tools.js";

const ready = mountToolsReady() && requireTools("fio", "cmp", "qemu-io");

const MiB = 1024 * 1024;
const IMAGE_SIZE = 256 * MiB;
const TRACKS = IMAGE_SIZE / (64 * 1024);
// mkfs touches every 4 MiB extent of the volume: a small activity log keeps the
// tracks a crash leaves marked well below the whole volume.
const AL_EXTENTS = 8;
const TRACKS_PER_EXTENT = 64;

interface PairStatus extends PrimaryStatus {
  readonly pair: { readonly lastDecision: string | null };
  readonly resync: PrimaryStatus["resync"] & { readonly lastCopiedTracks: number };
}

function cli(args: string[]) {
  return runPeercopy(args, 60_000);
}

async function expectIdentical(a: string, b: string): Promise<void> {
  const cmp = await compareImages(a, b);
  expect(cmp.exitCode, describeRun(cmp)).toBe(0);
}

/** Writes `count` files of random data, each fsynced, and returns their digests. */
async function writeSyncedFiles(mnt: string, prefix: string, count: number) {
  const digests = new Map<string, string>();
  await mkdir(join(mnt, prefix));
  for (let i = 0; i < count; i++) {
    const name = join(prefix, `f${i}.bin`);
    const data = randomBytes(1000 + ((i * 7919) % (300 * 1024)));
    const file = await open(join(mnt, name), "w");
    await file.write(data);
    await file.sync();
    await file.close();
    digests.set(name, sha256(data));
  }
  await runOk("sync", ["-f", mnt]);
  return digests;
}

async function expectFiles(mnt: string, files: ReadonlyMap<string, string>): Promise<void> {
  expect(files.size).toBeGreaterThan(0);
  for (const [name, digest] of files)
    expect(sha256(await readFile(join(mnt, name))), name).toBe(digest);
}

describe.skipIf(!ready)(
  "ext4 failover to a promoted secondary, failback and roles returned",
  () => {
    const teardown = new Teardown();
    const files = new Map<string, string>();
    let dir = "";
    let pImage = "";
    let sImage = "";
    /** The controller running on each image now. */
    let onP: Primary | Secondary | undefined;
    let onS: Primary | Secondary | undefined;

    beforeAll(async () => {
      dir = await controllerTempDir();
      pImage = join(dir, "p.img");
      sImage = join(dir, "s.img");
      onS = await startSecondary({ image: sImage, admin: true, keepAfterTest: true });
      onP = await startPrimary({
        image: pImage,
        remote: onS.replicationUri,
        mode: "sync",
        keepAfterTest: true,
        extraArgs: ["--al-extents", String(AL_EXTENTS)],
      });
      await onP.waitForPairState("full-duplex");
    });

    afterAll(async () => {
      const errors = await teardown.runAll();
      for (const name of ["mnt", "p.fuse", "s.fuse", "back.fuse"])
        if (dir !== "" && (await isMounted(join(dir, name))))
          errors.push(`${name} is still mounted`);
      await cleanupControllers();
      expect(errors).toEqual([]);
    });

    /** Mounts `uri` at dir/mnt through nbdfuse + loop; returns the loop device. */
    async function mountExport(uri: string, fuseName: string, mkfs: boolean): Promise<string> {
      const mnt = join(dir, "mnt");
      await mkdir(mnt, { recursive: true });
      const loop = await attachExport(uri, join(dir, fuseName), IMAGE_SIZE, teardown);
      if (mkfs) await runOk("mkfs.ext4", ["-q", loop], { timeoutMs: 60_000 });
      await runOk("mount", ["-t", "ext4", loop, mnt], { timeoutMs: 60_000 });
      teardown.push(`umount ${mnt}`, () => umount(mnt));
      return loop;
    }

    /** Unmounts cleanly, checks the filesystem, and detaches. */
    async function unmountChecked(loop: string): Promise<void> {
      await teardown.popNow(); // umount
      expect(await isMounted(join(dir, "mnt"))).toBe(false);
      const fsck = await run("e2fsck", ["-fn", loop], { timeoutMs: 60_000 });
      expect(fsck.exitCode, describeRun(fsck)).toBe(0);
      await teardown.popNow(); // losetup -d
      await teardown.popNow(); // fusermount3 -u
    }

    it("the primary dies under a writer; files synced before it are on the secondary", async () => {
      const primary = onP as Primary;
      await mountExport(primary.uri, "p.fuse", true);
      const mnt = join(dir, "mnt");
      for (const [k, v] of await writeSyncedFiles(mnt, "before", 60)) files.set(k, v);

      // A writer that is still going, never synced, when the primary is killed.
      const writer: ResultPromise = execa(
        "fio",
        [
          ...["--name=late", `--directory=${mnt}`, "--rw=randwrite", "--bs=16k", "--size=24M"],
          ...["--ioengine=psync", "--time_based", "--runtime=120", "--output-format=terse"],
        ],
        { reject: false, stdin: "ignore" },
      );
      const before = (await primary.status()).sequencer.subtasksDispatched;
      await primary.waitForStatus(
        (s) => s.sequencer.subtasksDispatched > before + 1000,
        "the late writer",
      );
      await primary.stop("SIGKILL");
      writer.kill("SIGKILL");
      await writer;
      // The dead device's filesystem, loop device and FUSE file go away (lazily where they must).
      expect(await teardown.runAll()).toEqual([]);
    });

    it("after the primary's silence the secondary is promoted: journal replayed, files intact, fsck clean", async () => {
      const secondary = onS as Secondary;
      await sleep(3200);
      const promoted = await cli(["promote", "--admin", secondary.adminAddress()]);
      expect(promoted.exitCode, describeRun(promoted)).toBe(0);
      // A SIGKILLed primary said nothing: this side cannot claim to hold every write.
      expect(JSON.parse(promoted.stdout)).toMatchObject({
        role: "primary",
        primaryStoppedInSync: null,
      });
      const loop = await mountExport(secondary.uri, "s.fuse", false);
      await expectFiles(join(dir, "mnt"), files);
      for (const [k, v] of await writeSyncedFiles(join(dir, "mnt"), "after-failover", 30))
        files.set(k, v);
      await expectFiles(join(dir, "mnt"), files);
      await unmountChecked(loop);
    });

    it("failback: the old primary returns as secondary; the union of marks is copied", async () => {
      await (onS as Secondary).stopClean();
      const back = await startSecondary({ image: pImage, admin: true, keepAfterTest: true });
      onP = back;
      expect(
        back.records().some((r) => String(r.msg).startsWith("this volume was a primary")),
      ).toBe(true);
      const newPrimary = await startPrimary({
        image: sImage,
        remote: back.replicationUri,
        mode: "sync",
        keepAfterTest: true,
      });
      onS = newPrimary;
      const synced = (await newPrimary.waitForPairState("full-duplex", 120_000)) as PairStatus;
      const compared = newPrimary.records().find((r) => r.msg === "pair generations compared");
      expect(compared?.decision).toBe("incremental");
      // Both sides' changes go across: what the promoted side wrote, and what the killed
      // primary wrote that never reached it. Not the whole volume.
      const local = Number(compared?.localChangedTracks);
      const remote = Number(compared?.remoteChangedTracks);
      expect(local).toBeGreaterThan(0);
      expect(remote).toBeGreaterThan(0);
      expect(synced.pair.lastDecision).toBe("incremental");
      expect(synced.resync.lastCopiedTracks).toBeGreaterThanOrEqual(Math.max(local, remote));
      expect(synced.resync.lastCopiedTracks).toBeLessThanOrEqual(local + remote);
      expect(remote).toBeLessThanOrEqual(AL_EXTENTS * TRACKS_PER_EXTENT);
      expect(synced.resync.lastCopiedTracks).toBeLessThan(TRACKS / 4);

      // The new primary's files, through it, while mirrored.
      const loop = await mountExport(newPrimary.uri, "back.fuse", false);
      await expectFiles(join(dir, "mnt"), files);
      await unmountChecked(loop);
      await newPrimary.stopClean();
      await expectIdentical(pImage, sImage);
    });

    it("a planned failover returns the roles: demote, promote at once, identical", async () => {
      // The new primary runs again on its image; demote it, then promote the old primary.
      const current = await startPrimary({
        image: sImage,
        remote: (onP as Secondary).replicationUri,
        mode: "sync",
        admin: true,
        keepAfterTest: true,
      });
      onS = current;
      const again = (await current.waitForPairState("full-duplex")) as PairStatus;
      expect(again.resync.lastCopiedTracks).toBe(0);
      const demoted = await cli(["demote", "--admin", current.adminAddress()]);
      expect(demoted.exitCode, describeRun(demoted)).toBe(0);
      expect(JSON.parse(demoted.stdout)).toMatchObject({ role: "secondary", inSync: true });
      const refused = await run("qemu-io", ["-f", "raw", current.uri, "-c", "write 0 4k"], {
        timeoutMs: 30_000,
      });
      // Demoted, the export says it is read-only: qemu will not open it for writing,
      // and reading it still works.
      expect(refused.exitCode, describeRun(refused)).not.toBe(0);
      expect(refused.stdout + refused.stderr).toMatch(/permission denied|read-only/i);
      const read = await run("qemu-io", ["-f", "raw", "-r", current.uri, "-c", "read 0 4k"], {
        timeoutMs: 30_000,
      });
      expect(read.exitCode, describeRun(read)).toBe(0);
      expect(read.stdout).toContain("read 4096/4096 bytes");

      // No waiting: the demoted primary told the secondary it let go, in sync.
      const promoted = await cli(["promote", "--admin", (onP as Secondary).adminAddress()]);
      expect(promoted.exitCode, describeRun(promoted)).toBe(0);
      expect(JSON.parse(promoted.stdout)).toMatchObject({
        role: "primary",
        primaryStoppedInSync: true,
      });
      await current.stopClean();
      await (onP as Secondary).stopClean();
      await expectIdentical(pImage, sImage);

      // The original roles, on the original images: nothing to copy.
      const s = await startSecondary({ image: sImage, keepAfterTest: true });
      const p = await startPrimary({
        image: pImage,
        remote: s.replicationUri,
        mode: "sync",
        keepAfterTest: true,
      });
      onP = p;
      onS = s;
      const home = (await p.waitForPairState("full-duplex")) as PairStatus;
      expect(home.pair.lastDecision).toBe("incremental");
      expect(home.resync.lastCopiedTracks).toBe(0);
      const loop = await mountExport(p.uri, "p.fuse", false);
      await expectFiles(join(dir, "mnt"), files);
      await unmountChecked(loop);
      await p.stopClean();
      await s.stopClean();
      await expectIdentical(pImage, sImage);
    });
  },
);
