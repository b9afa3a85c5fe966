// The link emulator against a real pair: added latency shows in a sync
// write's round trip (set at run time with `peercopy link set`, shown in the
// status and the metrics); a disconnect every second under fio is survived
// and the pair converges to identical images; an emulated NBD_EIO reply makes
// the primary react exactly as a real one from nbdkit's error filter does;
// over TLS the emulator shapes the encrypted bytes and refuses error replies.
import { writeFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  cleanupControllers,
  compareImages,
  controllerTempDir,
  fio,
  startPair,
  startPrimary,
  startSecondary,
  type Primary,
} from "../helpers/controllers.js";
import { startNbdkit, stopPeers } from "../helpers/peers.js";
import type { Logger } from "../../nbd/logger.js";
import { LinkEmulator } from "../../src/faults/link.js";
import { parseLinkChange } from "../../src/faults/settings.js";
import { createSparseFile, runPeercopy } from "../helpers/server.js";
import { describeRun, nbdshScript, py, requireTools, run } from "../helpers/tools.js";

const ready = requireTools("fio", "qemu-img", "qemu-io", "nbdsh", "nbdkit", "psktool");
const silentLogger: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};
const MiB = 1024 * 1024;

/** The median time of ten sequential 4 KiB writes, in µs, measured by libnbd. */
async function medianWriteMicros(uri: string): Promise<number> {
  const outcome = await nbdshScript(
    [
      "import time",
      `h.connect_uri(${py(uri)})`,
      "def median():",
      "    ts = []",
      "    for i in range(10):",
      "        t = time.monotonic()",
      '        h.pwrite(b"\\x5a" * 4096, 8388608 + i * 65536)',
      "        ts.append(time.monotonic() - t)",
      "    ts.sort()",
      "    return int(ts[len(ts) // 2] * 1e6)",
      'attempt("median", median)',
    ].join("\n"),
    { timeoutMs: 30_000 },
  );
  const m = outcome.median;
  if (m?.ok !== true || typeof m.value !== "number") throw new Error(JSON.stringify(outcome));
  return m.value;
}

function adminAddress(primary: Primary): string {
  return primary.adminAddress();
}

function linkEmulation(status: unknown): Record<string, unknown> {
  return (status as { link: { emulation: Record<string, unknown> } }).link.emulation;
}

function qemuIoWrite(uri: string, command: string) {
  return run("qemu-io", ["-f", "raw", "-t", "writeback", uri, "-c", command], {
    timeoutMs: 30_000,
  });
}

describe.skipIf(!ready)("link emulation", () => {
  afterAll(async () => {
    await stopPeers();
    await cleanupControllers();
  });

  it("sync: latency set at run time adds the round trip to each write, in status and metrics", async () => {
    const dir = await controllerTempDir();
    const { primary, secondary } = await startPair(dir, {
      mode: "sync",
      extraArgs: ["--link-emulation"],
    });
    const before = await medianWriteMicros(primary.uri);

    const set = await runPeercopy([
      "link",
      "set",
      "--admin",
      adminAddress(primary),
      "--latency",
      "20ms",
    ]);
    expect(set.exitCode, describeRun(set)).toBe(0);
    expect(set.stdout).toContain('"latencyMs": 20');
    const after = await medianWriteMicros(primary.uri);
    // 20 ms each way: a write cannot be acknowledged sooner than 40 ms after it was sent.
    expect(after, `before ${before} µs, after ${after} µs`).toBeGreaterThanOrEqual(39_000);
    expect(after - before).toBeGreaterThan(30_000);

    const status = await primary.status();
    expect(linkEmulation(status)).toMatchObject({ latencyMs: 20, bandwidthBytesPerSecond: 0 });
    const metrics = await primary.admin("GET", "/metrics");
    expect(metrics.text).toMatch(/^peercopy_link_emulation_latency_ms 20$/m);

    const bad = await runPeercopy([
      "link",
      "set",
      "--admin",
      adminAddress(primary),
      "--jitter",
      "x",
    ]);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toContain('--jitter: "x" is not a duration');

    await primary.stopClean();
    await secondary.stopClean();
    const same = await compareImages(primary.image, secondary.image);
    expect(same.stdout, describeRun(same)).toContain("Images are identical.");
  }, 60_000);

  it("async: a disconnect every second under fio; the pair converges to identical images", async () => {
    const dir = await controllerTempDir();
    const { primary, secondary } = await startPair(dir, {
      mode: "async",
      extraArgs: ["--link-disconnect-every", "1s", "--link-latency", "1ms"],
    });
    const load = await fio(
      primary.uri,
      [
        ...["--name=load", "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=32M"],
        ...["--time_based", "--runtime=4", "--randrepeat=1"],
      ],
      dir,
    );
    expect(load.result.exitCode, describeRun(load.result)).toBe(0);
    expect(load.jobs[0]?.error, describeRun(load.result)).toBe(0);
    const during = await primary.waitForStatus(
      (s) => s.link.reconnects >= 2,
      "two reconnections",
      15_000,
    );
    expect(Number(linkEmulation(during).disconnects)).toBeGreaterThanOrEqual(2);
    const lost = primary.records().filter((r) => r.msg === "link lost");
    expect(lost.length).toBeGreaterThanOrEqual(2);
    expect(String(lost[0]?.err)).toContain("link emulation: a disconnect every 1000 ms");

    const res = await primary.admin("POST", "/link/set", { disconnectEvery: "off" });
    expect(res.status, res.text).toBe(200);
    const healed = await primary.waitForPairState("full-duplex", 30_000);
    expect(healed.outOfSync.tracks).toBe(0);
    await primary.stopClean();
    await secondary.stopClean();
    const same = await compareImages(primary.image, secondary.image);
    expect(same.stdout, describeRun(same)).toContain("Images are identical.");
  }, 90_000);

  it("an emulated EIO reply makes the primary react as nbdkit's real one does", async () => {
    const dir = await controllerTempDir();
    // Past the first resync window: the initial copy must not itself send a write there.
    const written = 100 * MiB;

    // A real EIO: nbdkit's error filter fails every write while its trigger file exists.
    const trigger = join(dir, "nbdkit-errors");
    const nbdkitImage = join(dir, "nbdkit.img");
    await createSparseFile(nbdkitImage, 256 * MiB);
    const nbdkit = await startNbdkit({
      flags: ["--exit-with-parent", "--filter=error"],
      plugin: [
        "file",
        nbdkitImage,
        "error-pwrite=EIO",
        "error-pwrite-rate=100%",
        `error-file=${trigger}`,
      ],
    });
    const real = await startPrimary({ image: join(dir, "real.img"), remote: nbdkit.uri });
    await real.waitForPairState("full-duplex");

    // The emulated one: the link emulator answers writes to one range with NBD_EIO.
    const secondary = await startSecondary({ image: join(dir, "secondary.img") });
    const emulated = await startPrimary({
      image: join(dir, "emulated.img"),
      remote: secondary.replicationUri,
      extraArgs: ["--link-error-range", `${written}:4K`],
    });
    await emulated.waitForPairState("full-duplex");

    await writeFile(trigger, "");
    const reactions = [];
    for (const primary of [real, emulated]) {
      const w = await qemuIoWrite(primary.uri, `write -P 0x42 ${written} 4k`);
      expect(w.exitCode, describeRun(w)).toBe(0); // --on-link-loss suspend: the host write stands
      const s = await primary.waitForStatus(
        (st) => st.pairState === "suspended",
        "suspended after the EIO",
        10_000,
      );
      const lost = await primary.waitForLog((r) => r.msg === "link lost", "link lost");
      reactions.push({
        pairState: s.pairState,
        suspendReason: s.suspendReason,
        err: lost.err,
        outOfSyncTracks: s.outOfSync.tracks > 0,
      });
    }
    expect(reactions[1]).toEqual(reactions[0]);
    expect(reactions[0]).toMatchObject({
      suspendReason: "link",
      err: `NBD_CMD_WRITE at offset ${written} length 4096 failed with EIO`,
    });
    expect(linkEmulation(await emulated.status()).injectedErrors).not.toBe(0);

    // The fault goes away: both reconnect, resync the marked track and are whole again.
    await rm(trigger);
    const res = await emulated.admin("POST", "/link/set", { errorRange: "off" });
    expect(res.status, res.text).toBe(200);
    await real.waitForPairState("full-duplex", 30_000);
    await emulated.waitForPairState("full-duplex", 30_000);
    await emulated.stopClean();
    await secondary.stopClean();
    await real.stopClean();
    const same = await compareImages(emulated.image, secondary.image);
    expect(same.stdout, describeRun(same)).toContain("Images are identical.");
    const sameReal = await compareImages(real.image, nbdkitImage);
    expect(sameReal.stdout, describeRun(sameReal)).toContain("Images are identical.");
  }, 90_000);

  it("over nbds:// the emulator delays the TLS records and refuses error replies", async () => {
    const dir = await controllerTempDir();
    const psk = join(dir, "alice.psk");
    const made = await run("psktool", ["-u", "alice", "-p", psk]);
    expect(made.exitCode, describeRun(made)).toBe(0);
    const nbdkit = await startNbdkit({
      flags: ["--exit-with-parent", "--tls=require", `--tls-psk=${psk}`],
      plugin: ["memory", "16M"],
    });
    const remote = nbdkit.uri.replace(/^nbd:\/\//, "nbds://alice@") + `?tls-psk-file=${psk}`;
    const emulator = new LinkEmulator(remote, silentLogger);
    expect(() => emulator.apply(parseLinkChange({ errorRate: "0.5" }, (k) => k))).toThrow(
      /error replies need a plaintext link/,
    );
    emulator.apply(parseLinkChange({ latency: "20ms" }, (k) => k));
    const client = await emulator.connect(remote, { timeoutMs: 10_000, metaContexts: [] });
    try {
      const data = Buffer.alloc(4096, 0x5a);
      const t = performance.now();
      await client.write(data, 4096);
      const elapsed = performance.now() - t;
      // 20 ms each way: the reply cannot come sooner than 40 ms after the request left.
      expect(elapsed).toBeGreaterThanOrEqual(39);
      const back = Buffer.alloc(4096);
      await client.read(back, 4096);
      expect(back.equals(data)).toBe(true);
    } finally {
      await client.close();
      emulator.close();
    }
  }, 30_000);

  it("bad --link-* options are usage errors naming the option", async () => {
    const cases: [string[], string][] = [
      [["--link-latency", "5 parsecs"], '--link-latency: "5 parsecs" is not a duration'],
      [["--link-error-rate", "2"], '--link-error-rate: "2" is not a fraction from 0 to 1'],
      [["--link-error-range", "1M"], '--link-error-range: "1M" is not OFFSET:LENGTH'],
      [["--link-stall", "1s"], "--link-stall at start needs --link-stall-every"],
      [["--link-bandwidth", "fast"], '--link-bandwidth: "fast" is not a size'],
    ];
    for (const [args, message] of cases) {
      const r = await runPeercopy([
        "primary",
        "--memory",
        "16M",
        "--remote",
        "nbd://127.0.0.1:1/replication",
        ...args,
      ]);
      expect(r.exitCode, describeRun(r)).toBe(2);
      expect(r.stderr).toContain(message);
    }
  }, 30_000);
});
