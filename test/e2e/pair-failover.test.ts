// The pair's life after the first copy, with real processes and real tools:
// persistent marks across restarts and crashes of either side, promotion of the
// secondary, split brain held and resolved. Every check reads the images.
import { open } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  cleanupControllers,
  compareImages,
  controllerTempDir,
  fio,
  sleep,
  startPair,
  startPrimary,
  startSecondary,
  stopFio,
  type Primary,
  type PrimaryStatus,
  type Secondary,
} from "../helpers/controllers.js";
import { describeRun, requireTools, run } from "../helpers/tools.js";
import { runPeercopy } from "../helpers/server.js";

const ready = requireTools("fio", "qemu-img", "qemu-io");
const KiB = 1024;
const TRACK = 64 * KiB;
const TRACKS_PER_EXTENT = (4 * 1024 * KiB) / TRACK;

interface PairStatus extends PrimaryStatus {
  readonly pair: {
    readonly lastDecision: string | null;
    readonly localChangedTracks: number | null;
    readonly remoteChangedTracks: number | null;
    readonly recoveredFromCrash: boolean;
    readonly recoveredActivityLogTracks: number;
  };
  readonly resync: PrimaryStatus["resync"] & { readonly lastCopiedTracks: number };
}

async function pairStatus(p: Primary): Promise<PairStatus> {
  return (await p.status()) as PairStatus;
}

/** Write `pattern` over [offset, offset+length) through an NBD export with qemu-io. */
async function writePattern(uri: string, pattern: number, offset: number, length: number) {
  const io = await run(
    "qemu-io",
    ["-f", "raw", "-t", "writeback", uri, "-c", `write -P ${pattern} ${offset} ${length}`],
    { timeoutMs: 30_000 },
  );
  expect(io.exitCode, describeRun(io)).toBe(0);
  expect(io.stdout + io.stderr).not.toMatch(/error|failed/i);
}

/** The bytes of an image file (read directly, behind the controllers' backs). */
async function readImage(path: string, offset: number, length: number): Promise<Buffer> {
  const file = await open(path, "r");
  try {
    const buf = Buffer.alloc(length);
    await file.read(buf, 0, length, offset);
    return buf;
  } finally {
    await file.close();
  }
}

function filled(length: number, byte: number): Buffer {
  return Buffer.alloc(length, byte);
}

async function expectIdentical(a: string, b: string): Promise<void> {
  const cmp = await compareImages(a, b);
  expect(cmp.exitCode, describeRun(cmp)).toBe(0);
}

function cli(args: string[]) {
  return runPeercopy(args, 30_000);
}

describe.skipIf(!ready)("pair across restarts and failover", () => {
  afterAll(cleanupControllers);

  it("SIGKILL of the primary under fio: the restart resyncs only the activity log's tracks", async () => {
    const dir = await controllerTempDir();
    const alExtents = 4;
    const { primary, secondary } = await startPair(dir, {
      mode: "sync",
      extraArgs: ["--al-extents", String(alExtents)],
    });
    const load = fio(
      primary.uri,
      [
        ...["--name=load", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=256M"],
        ...["--time_based", "--runtime=30"],
      ],
      dir,
    );
    await primary.waitForStatus((s) => s.sequencer.subtasksDispatched > 2000, "writes flowing");
    expect((await primary.status()).pairState).toBe("full-duplex");
    await primary.stop("SIGKILL");
    await load; // fails once the primary is gone

    const again = await startPrimary({
      image: primary.image,
      remote: secondary.replicationUri,
      extraArgs: ["--al-extents", String(alExtents)],
    });
    const crash = await again.waitForLog(
      (r) => String(r.msg).includes("did not stop cleanly"),
      "crash recovery",
    );
    const resyncStarted = await again.waitForLog((r) => r.msg === "resync started", "resync");
    const synced = await again.waitForPairState("full-duplex");
    const s = await pairStatus(again);
    const bound = alExtents * TRACKS_PER_EXTENT;
    expect(s.pair.recoveredFromCrash).toBe(true);
    expect(s.pair.lastDecision).toBe("incremental");
    expect(resyncStarted.tracks).toBe(s.resync.lastCopiedTracks);
    expect(crash.outOfSyncTracks).toBeLessThanOrEqual(bound);
    expect(s.resync.lastCopiedTracks).toBeGreaterThan(0);
    expect(s.resync.lastCopiedTracks).toBeLessThanOrEqual(bound);
    expect(synced.outOfSync.tracks).toBe(0);
    await again.stopClean();
    await secondary.stopClean();
    await expectIdentical(primary.image, secondary.image);

    // A clean stop of both and a restart: nothing to copy.
    const s2 = await startSecondary({ image: secondary.image });
    const p2 = await startPrimary({ image: primary.image, remote: s2.replicationUri });
    await p2.waitForPairState("full-duplex");
    const after = await pairStatus(p2);
    expect(after.pair.recoveredFromCrash).toBe(false);
    expect(after.resync.lastCopiedTracks).toBe(0);
    expect(p2.records().some((r) => r.msg === "resync started" && r.tracks !== 0)).toBe(false);
    await p2.stopClean();
    await s2.stopClean();
  });

  it("async: 20 SIGKILLs of the secondary under fio; the pair converges to identical images", async () => {
    const dir = await controllerTempDir();
    const { primary, secondary } = await startPair(dir, { mode: "async" });
    const load = fio(
      primary.uri,
      [
        ...["--name=load", "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=64M"],
        ...["--time_based", "--runtime=600"],
      ],
      dir,
    );
    let current: Secondary = secondary;
    for (let i = 0; i < 20; i++) {
      // Kill it at a different point of each reconnection: mid-resync or mirroring.
      await primary.waitForStatus((s) => s.link.state === "up", "the link up", 30_000);
      await sleep((i * 53) % 400);
      await current.stop("SIGKILL");
      current = await startSecondary({ image: secondary.image, port: secondary.port });
    }
    const done = await stopFio(primary.uri, load);
    expect(done.jobs[0]?.error ?? -1, describeRun(done.result)).toBe(0);
    const synced = await primary.waitForStatus(
      (s) => s.pairState === "full-duplex" && s.outOfSync.tracks === 0 && s.lag.writes === 0,
      "convergence",
      60_000,
    );
    expect(synced.link.reconnects).toBeGreaterThanOrEqual(20);
    await primary.stopClean();
    await current.stopClean();
    await expectIdentical(primary.image, secondary.image);
  }, 240_000);

  it("promote refuses while a primary is connected, then takes over once it is gone", async () => {
    const dir = await controllerTempDir();
    const secondary = await startSecondary({ image: join(dir, "s.img"), admin: true });
    const primary = await startPrimary({
      image: join(dir, "p.img"),
      remote: secondary.replicationUri,
    });
    await primary.waitForPairState("full-duplex");
    await writePattern(primary.uri, 0x5a, 0, 128 * KiB);
    // The link is idle now; its heartbeat still tells the secondary a primary is there.
    await sleep(1500);
    const refused = await cli(["promote", "--admin", secondary.adminAddress()]);
    expect(refused.exitCode, describeRun(refused)).toBe(1);
    expect(refused.stderr).toMatch(/a primary is connected.*--force/);
    const hostWrite = await run(
      "qemu-io",
      ["-f", "raw", secondary.uri, "-c", "write -P 0x11 0 4k"],
      { timeoutMs: 30_000 },
    );
    expect(hostWrite.stdout + hostWrite.stderr).toMatch(
      /read-only|Operation not permitted|EPERM|Permission/i,
    );

    await primary.stop("SIGKILL");
    await sleep(3200);
    const promoted = await cli(["promote", "--admin", secondary.adminAddress()]);
    expect(promoted.exitCode, describeRun(promoted)).toBe(0);
    expect(JSON.parse(promoted.stdout)).toMatchObject({ role: "primary" });
    await writePattern(secondary.uri, 0x77, 64 * KiB, 64 * KiB);
    expect(await readImage(secondary.image, 0, 64 * KiB)).toEqual(filled(64 * KiB, 0x5a));
    expect(await readImage(secondary.image, 64 * KiB, 64 * KiB)).toEqual(filled(64 * KiB, 0x77));
    const st = JSON.parse((await secondary.admin("GET", "/status")).text) as {
      role: string;
      outOfSync: { tracks: number };
    };
    expect(st).toMatchObject({ role: "primary", outOfSync: { tracks: 1 } });

    // The old primary comes back as it was: it finds the promotion and refuses to mirror.
    const back = await startPrimary({ image: primary.image, remote: secondary.replicationUri });
    const s = await back.waitForStatus((x) => x.link.state === "refused", "refusal");
    expect(s.pairState).toBe("suspended");
    expect(s.suspendReason).toBe("peer-promoted");
    expect(await readImage(secondary.image, 64 * KiB, 64 * KiB)).toEqual(filled(64 * KiB, 0x77));
    await back.stopClean();
    await secondary.stopClean();
  });

  it("split brain: both sides written apart; refused, nothing overwritten; resolve --discard remote", async () => {
    const dir = await controllerTempDir();
    const { primary, secondary } = await startPair(dir, { mode: "sync" });
    await writePattern(primary.uri, 0x01, 0, 4 * TRACK);
    await secondary.stop("SIGKILL");
    // The primary goes on alone: track 1 changes here only.
    await writePattern(primary.uri, 0xaa, TRACK, TRACK);
    // Meanwhile the secondary, started elsewhere, is promoted and written: track 3.
    const away = await startSecondary({ image: secondary.image, admin: true });
    const promote = await away.admin("POST", "/promote", { force: true });
    expect(promote.status, promote.text).toBe(200);
    await writePattern(away.uri, 0xbb, 3 * TRACK, TRACK);
    await away.stopClean();

    // It returns as the secondary on the address the primary keeps trying.
    const returned = await startSecondary({ image: secondary.image, port: secondary.port });
    const sb = (await primary.waitForPairState("split-brain")) as PairStatus;
    expect(sb.link.state).toBe("refused");
    expect(sb.pair.localChangedTracks).toBeGreaterThanOrEqual(1);
    expect(sb.pair.remoteChangedTracks).toBe(1);
    expect(primary.records().some((r) => r.decision === "split-brain")).toBe(true);
    await sleep(500);
    // Nothing was overwritten on either side.
    expect(await readImage(primary.image, TRACK, TRACK)).toEqual(filled(TRACK, 0xaa));
    expect(await readImage(primary.image, 3 * TRACK, TRACK)).toEqual(filled(TRACK, 0x01));
    expect(await readImage(secondary.image, TRACK, TRACK)).toEqual(filled(TRACK, 0x01));
    expect(await readImage(secondary.image, 3 * TRACK, TRACK)).toEqual(filled(TRACK, 0xbb));

    const wrong = await cli(["resolve", "--admin", primary.adminAddress()]);
    expect(wrong.exitCode).toBe(2);
    expect(wrong.stderr).toMatch(/--discard/);
    const resolved = await cli([
      "resolve",
      "--discard",
      "remote",
      "--admin",
      primary.adminAddress(),
    ]);
    expect(resolved.exitCode, describeRun(resolved)).toBe(0);
    const synced = (await primary.waitForPairState("full-duplex")) as PairStatus;
    // The union of both sides' changes went across, no more than the tracks written.
    expect(synced.resync.lastCopiedTracks).toBeGreaterThanOrEqual(2);
    expect(synced.resync.lastCopiedTracks).toBeLessThanOrEqual(5);
    await primary.stopClean();
    await returned.stopClean();
    await expectIdentical(primary.image, secondary.image);
    expect(await readImage(secondary.image, 3 * TRACK, TRACK)).toEqual(filled(TRACK, 0x01));
  });

  it("a second controller on the same volume is refused; its metadata is in use", async () => {
    const dir = await controllerTempDir();
    const secondary = await startSecondary({ image: join(dir, "s.img") });
    const second = await cli([
      "primary",
      secondary.image,
      "--listen",
      "127.0.0.1:0",
      "--remote",
      "nbd://127.0.0.1:1/",
    ]);
    expect(second.exitCode, describeRun(second)).toBe(2);
    expect(second.stderr).toMatch(new RegExp(`in use by process ${secondary.pid}`));
    await secondary.stopClean();
  });

  it("a read-only remote is a configuration error at start, with the fix", async () => {
    const dir = await controllerTempDir();
    const secondary = await startSecondary({ image: join(dir, "s.img") });
    const result = await cli([
      "primary",
      join(dir, "p.img"),
      "--size",
      "256M",
      "--listen",
      "127.0.0.1:0",
      "--remote",
      secondary.uri,
    ]);
    expect(result.exitCode, describeRun(result)).toBe(2);
    expect(result.stderr).toMatch(/configuration error/);
    expect(result.stderr).toMatch(/\/replication/);
    expect(result.stderr).not.toMatch(/reconnecting/);
  });
});
