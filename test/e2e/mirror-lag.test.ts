// Bounded lag in async mode, against a secondary slowed down on purpose
// (nbdkit's delay filter: 20 ms per write). With --on-lag suspend the pair
// stops mirroring when the bound is passed and hosts go on at full speed; with
// --on-lag block hosts are slowed down instead and the pair stays in full
// duplex with the lag held at the bound.
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  cleanupControllers,
  compareImages,
  controllerTempDir,
  fio,
  sleep,
  startPrimary,
  type PrimaryStatus,
} from "../helpers/controllers.js";
import { startNbdkit, stopPeers, type Peer } from "../helpers/peers.js";
import { createSparseFile } from "../helpers/server.js";
import { describeRun, requireTools } from "../helpers/tools.js";

const ready = requireTools("fio", "nbdkit", "qemu-img");
const KiB = 1024;
const MiB = 1024 * KiB;
const MAX_LAG = 1 * MiB;
const REQUEST = 4 * KiB;

const LOAD = [
  ...["--name=load", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=32M"],
  ...["--time_based", "--runtime=3"],
];

async function slowSecondary(dir: string): Promise<{ peer: Peer; image: string }> {
  const image = join(dir, "secondary.img");
  await createSparseFile(image, 256 * MiB);
  const peer = await startNbdkit({
    flags: ["--exit-with-parent", "--filter=delay"],
    plugin: ["file", image, "delay-write=20ms"],
  });
  return { peer, image };
}

describe.skipIf(!ready)("--max-lag in async mode against a slow secondary", () => {
  afterAll(async () => {
    await stopPeers();
    await cleanupControllers();
  });

  it("--on-lag suspend: the pair suspends (lag) under load; hosts go on; resume heals", async () => {
    const dir = await controllerTempDir();
    const { peer, image } = await slowSecondary(dir);
    const primary = await startPrimary({
      image: join(dir, "primary.img"),
      remote: peer.uri,
      mode: "async",
      maxLag: "1M",
      onLag: "suspend",
    });
    await primary.waitForPairState("full-duplex");
    const load = fio(primary.uri, LOAD, dir);
    const suspended = await primary.waitForStatus(
      (s) => s.pairState === "suspended",
      "suspended under load",
      15_000,
    );
    expect(suspended.suspendReason).toBe("lag");
    const result = await load;
    expect(result.result.exitCode, describeRun(result.result)).toBe(0);
    expect(result.jobs[0]?.error, describeRun(result.result)).toBe(0);
    const after = await primary.status();
    expect(after).toMatchObject({ pairState: "suspended", suspendReason: "lag" });
    expect(after.outOfSync.tracks).toBeGreaterThan(0);

    const resumed = await primary.admin("POST", "/resume");
    expect(resumed.status, resumed.text).toBe(200);
    await primary.waitForPairState("full-duplex", 30_000);
    await primary.stopClean();
    await peer.stop();
    const same = await compareImages(primary.image, image);
    expect(same.stdout, describeRun(same)).toContain("Images are identical.");
  }, 90_000);

  it("--on-lag block: full duplex throughout, lag held at the bound", async () => {
    const dir = await controllerTempDir();
    const { peer, image } = await slowSecondary(dir);
    const primary = await startPrimary({
      image: join(dir, "primary.img"),
      remote: peer.uri,
      mode: "async",
      maxLag: "1M",
      onLag: "block",
    });
    await primary.waitForPairState("full-duplex");
    let finished = false;
    const load = fio(primary.uri, LOAD, dir).finally(() => (finished = true));
    const samples: PrimaryStatus[] = [];
    while (!finished) {
      samples.push(await primary.status());
      await sleep(100);
    }
    const result = await load;
    expect(result.result.exitCode, describeRun(result.result)).toBe(0);
    expect(result.jobs[0]?.error, describeRun(result.result)).toBe(0);

    const lags = samples.map((s) => s.lag.bytes);
    expect(samples.length).toBeGreaterThanOrEqual(5);
    for (const s of samples) expect(s.pairState).toBe("full-duplex");
    // The load did reach the bound, so the backpressure was in play …
    expect(Math.max(...lags), JSON.stringify(lags)).toBeGreaterThanOrEqual(MAX_LAG / 2);
    // … and held the lag there: at most one request past it, however many
    // requests the host has in flight.
    for (const lag of lags)
      expect(lag, JSON.stringify(lags)).toBeLessThanOrEqual(MAX_LAG + REQUEST);

    await primary.stopClean();
    await peer.stop();
    const same = await compareImages(primary.image, image);
    expect(same.stdout, describeRun(same)).toContain("Images are identical.");
  }, 90_000);
});
