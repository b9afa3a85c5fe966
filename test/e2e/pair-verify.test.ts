// Online verify while a host writes: bytes of the secondary's image are changed
// behind its back, `peercopy verify` finds exactly those tracks, `--no-resync`
// leaves them marked (and the image as it was), `peercopy resume` or a verify
// with resync repairs them. Against a peercopy secondary the sides compare
// checksums; against nbdkit's file plugin both sides are read.
import { open } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  cleanupControllers,
  compareImages,
  controllerTempDir,
  fio,
  startPair,
  startPrimary,
  stopFio,
  type FioRun,
  type Primary,
  type PrimaryStatus,
} from "../helpers/controllers.js";
import { startNbdkit, stopPeers } from "../helpers/peers.js";
import { createSparseFile, runPeercopy } from "../helpers/server.js";
import { describeRun, requireTools, run } from "../helpers/tools.js";

const ready = requireTools("fio", "qemu-io", "nbdkit", "cmp");
const MiB = 1024 * 1024;
const TRACK = 64 * 1024;
const IMAGE_SIZE = 256 * MiB;

interface VerifyResult {
  readonly complete: boolean;
  readonly method: string;
  readonly checkedTracks: number;
  readonly differingTracks: number;
  readonly differing: number[];
  readonly busyTracks: number;
  readonly markedTracks: number;
}

interface Status extends PrimaryStatus {
  readonly verify: { readonly running: boolean; readonly last: VerifyResult | null };
  readonly resync: PrimaryStatus["resync"] & { readonly lastCopiedTracks: number | null };
}

async function verify(p: Primary, ...args: string[]) {
  const result = await runPeercopy(
    ["verify", "--wait", "--admin", p.adminAddress(), ...args],
    120_000,
  );
  // Two JSON documents: the start reply, then the result.
  const docs = result.stdout.split(/\n(?=\{)/).map((d) => JSON.parse(d) as unknown);
  return { result, started: docs[0] as { totalTracks: number }, last: docs[1] as VerifyResult };
}

/** Changes a few bytes in the middle of each track, behind the controllers' backs. */
async function corrupt(image: string, tracks: readonly number[]): Promise<void> {
  const file = await open(image, "r+");
  try {
    for (const t of tracks)
      await file.write(Buffer.from("not the primary"), 0, 15, t * TRACK + 999);
    await file.sync();
  } finally {
    await file.close();
  }
}

async function writePattern(uri: string) {
  const io = await run(
    "qemu-io",
    [
      "-f",
      "raw",
      "-t",
      "writeback",
      uri,
      "-c",
      "write -P 0x3c 0 16M",
      "-c",
      "write -P 0x4d 100M 8M",
    ],
    { timeoutMs: 60_000 },
  );
  expect(io.exitCode, describeRun(io)).toBe(0);
}

/** A host writer on [128 MiB, 192 MiB) for the whole check, stopped by the test. */
function hostLoad(p: Primary, dir: string): Promise<FioRun> {
  return fio(
    p.uri,
    [
      ...["--name=host", "--rw=randwrite", "--bs=4k", "--iodepth=8", "--offset=128M"],
      ...["--size=64M", "--time_based", "--runtime=300"],
    ],
    dir,
  );
}

async function stopLoad(p: Primary, load: Promise<FioRun>): Promise<void> {
  const done = await stopFio(p.uri, load);
  expect(done.jobs[0]?.error ?? -1, describeRun(done.result)).toBe(0);
}

describe.skipIf(!ready)("online verify", () => {
  afterAll(async () => {
    await stopPeers();
    await cleanupControllers();
  });

  it("peercopy secondary: checksums find exactly the changed tracks; resume and verify repair them", async () => {
    const dir = await controllerTempDir();
    const { primary, secondary } = await startPair(dir, { mode: "sync" });
    await writePattern(primary.uri);
    const load = hostLoad(primary, dir);
    await primary.waitForStatus((s) => s.sequencer.subtasksDispatched > 500, "host writes");

    const first = [3, 40, 1000, 1600, 4095];
    await corrupt(secondary.image, first);
    const found = await verify(primary, "--no-resync");
    expect(found.result.exitCode, describeRun(found.result)).toBe(1);
    expect(found.result.stderr).toMatch(/5 tracks differ/);
    expect(found.started.totalTracks).toBe(IMAGE_SIZE / TRACK);
    expect(found.last).toMatchObject({ complete: true, method: "checksums", differingTracks: 5 });
    expect(found.last.differing).toEqual(first);
    expect(found.last.checkedTracks + found.last.busyTracks).toBe(IMAGE_SIZE / TRACK);
    let s = (await primary.status()) as Status;
    expect(s.outOfSync.tracks).toBe(5);
    expect(s.pairState).toBe("full-duplex");
    // Nothing was copied: the secondary still holds the changed bytes.
    expect((await compareImages(primary.image, secondary.image)).exitCode).toBe(1);

    const resume = await runPeercopy(["resume", "--admin", primary.adminAddress()], 60_000);
    expect(resume.exitCode, describeRun(resume)).toBe(0);
    s = (await primary.waitForStatus(
      (x) => x.pairState === "full-duplex" && x.outOfSync.tracks === 0,
      "the marked tracks copied",
    )) as Status;
    expect(s.resync.lastCopiedTracks).toBe(5);
    const clean = await verify(primary);
    expect(clean.result.exitCode, describeRun(clean.result)).toBe(0);
    expect(clean.last).toMatchObject({ complete: true, differingTracks: 0 });

    // A verify with resync (the default) repairs what it finds by itself.
    await corrupt(secondary.image, [7, 3500]);
    const repaired = await verify(primary);
    expect(repaired.result.exitCode).toBe(1);
    expect(repaired.last.differing).toEqual([7, 3500]);
    s = (await primary.waitForStatus(
      (x) =>
        x.pairState === "full-duplex" &&
        x.outOfSync.tracks === 0 &&
        (x as Status).resync.lastCopiedTracks === 2,
      "the differing tracks copied",
    )) as Status;
    expect(s.resync.lastCopiedTracks).toBe(2);
    await stopLoad(primary, load);
    await primary.stopClean();
    await secondary.stopClean();
    const same = await compareImages(primary.image, secondary.image);
    expect(same.exitCode, describeRun(same)).toBe(0);
  });

  it("nbdkit secondary: both sides are read; the changed tracks are found", async () => {
    const dir = await controllerTempDir();
    const image = join(dir, "nbdkit.img");
    await createSparseFile(image, IMAGE_SIZE);
    const nbdkit = await startNbdkit({ flags: ["--exit-with-parent"], plugin: ["file", image] });
    const primary = await startPrimary({ image: join(dir, "p.img"), remote: nbdkit.uri });
    await primary.waitForPairState("full-duplex");
    await writePattern(primary.uri);
    const load = hostLoad(primary, dir);
    await corrupt(image, [0, 255, 1999]);
    const found = await verify(primary, "--no-resync");
    expect(found.result.exitCode, describeRun(found.result)).toBe(1);
    expect(found.last).toMatchObject({ complete: true, method: "reads", differingTracks: 3 });
    expect(found.last.differing).toEqual([0, 255, 1999]);
    await stopLoad(primary, load);
    await primary.stopClean();
    await nbdkit.stop();
  });

  it("refuses while the pair is not mirroring, naming its state", async () => {
    const dir = await controllerTempDir();
    const { primary } = await startPair(dir, { mode: "sync" });
    const suspended = await primary.admin("POST", "/suspend");
    expect(suspended.status).toBe(200);
    const refused = await runPeercopy(["verify", "--admin", primary.adminAddress()], 60_000);
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toMatch(/verify compares a mirroring pair: the pair is suspended/);
  });
});
