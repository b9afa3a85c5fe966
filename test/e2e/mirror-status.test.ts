// The primary's admin API against a real pair: GET /status figures with their
// types and plausible values after a multi-track workload, GET /metrics in the
// Prometheus text format, and POST /suspend and /resume with what they do to
// the out-of-sync tracks and to the secondary's image.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  cleanupControllers,
  compareImages,
  controllerTempDir,
  fio,
  startPair,
  type Primary,
  type Secondary,
} from "../helpers/controllers.js";
import { describeRun, requireTools, run } from "../helpers/tools.js";

const ready = requireTools("fio", "qemu-io", "qemu-img");
const KiB = 1024;
const MiB = 1024 * KiB;
const TRACK = 64 * KiB;

/** Ten 4 KiB writes, each on its own 64 KiB track, well away from the fio region. */
const SUSPENDED_WRITES = Array.from({ length: 10 }, (_, i) => 160 * MiB + i * 3 * TRACK + 512);

function qemuIo(uri: string, commands: readonly string[], readOnly = false) {
  const args = ["-f", "raw", ...(readOnly ? ["-r"] : ["-t", "writeback"]), uri];
  for (const c of commands) args.push("-c", c);
  return run("qemu-io", args, { timeoutMs: 30_000 });
}

function at(value: unknown, path: string): unknown {
  let v = value;
  for (const key of path.split(".")) {
    if (typeof v !== "object" || v === null) return undefined;
    v = (v as Record<string, unknown>)[key];
  }
  return v;
}

describe.skipIf(!ready)("primary admin API: status, metrics, suspend and resume", () => {
  let primary: Primary | undefined;
  let secondary: Secondary | undefined;
  let dir = "";

  beforeAll(async () => {
    dir = await controllerTempDir();
    ({ primary, secondary } = await startPair(dir, { mode: "sync", keepAfterTest: true }));
  });
  afterAll(cleanupControllers);

  function pair(): { p: Primary; s: Secondary } {
    if (primary === undefined || secondary === undefined) throw new Error("beforeAll failed");
    return { p: primary, s: secondary };
  }

  it("GET /status: typed, plausible figures after a multi-track workload", async () => {
    const { p } = pair();
    // 1 MiB writes cover 16 tracks each; their local writes finish in any order, which
    // the sequencer counts. How often that happens is up to the thread pool's timing, so
    // a loaded machine gets a few more rounds (over the same 32 MiB) to show one.
    let rounds = 0;
    let outOfOrder = 0;
    while (rounds < 5 && (rounds === 0 || outOfOrder === 0)) {
      rounds++;
      const load = await fio(
        p.uri,
        ["--name=seq", "--rw=write", "--bs=1M", "--iodepth=8", "--size=32M", "--offset=0"],
        dir,
      );
      expect(load.result.exitCode, describeRun(load.result)).toBe(0);
      expect(load.jobs[0]?.error).toBe(0);
      outOfOrder = (await p.status()).sequencer.subtasksOutOfOrder;
    }

    const reply = await p.admin("GET", "/status");
    expect(reply.status).toBe(200);
    expect(reply.contentType).toContain("application/json");
    const status: unknown = JSON.parse(reply.text);
    const types: Record<string, string> = {
      role: "string",
      mode: "string",
      pairState: "string",
      "outOfSync.tracks": "number",
      "outOfSync.bytes": "number",
      "lag.writes": "number",
      "lag.bytes": "number",
      "lag.ms": "number",
      "sequencer.subtasksQueued": "number",
      "sequencer.subtasksOutOfOrder": "number",
      "sequencer.subtasksDispatched": "number",
      "link.state": "string",
      "link.sentRequests": "number",
      trackSize: "number",
    };
    for (const [path, type] of Object.entries(types))
      expect(typeof at(status, path), `${path} in ${reply.text}`).toBe(type);
    expect(at(status, "suspendReason")).toBeNull();

    const s = await p.status();
    expect(s).toMatchObject({
      role: "primary",
      mode: "sync",
      pairState: "full-duplex",
      trackSize: TRACK,
      outOfSync: { tracks: 0, bytes: 0 },
      // sync: nothing is acknowledged to hosts before the secondary has it.
      lag: { writes: 0, bytes: 0, ms: 0 },
      link: { state: "up", errors: 0 },
      sequencer: { subtasksQueued: 0 },
    });
    expect(
      s.sequencer.subtasksOutOfOrder,
      `no out-of-order arrival in ${rounds} rounds`,
    ).toBeGreaterThan(0);
    // The initial copy (4096 tracks) and 32 MiB of host writes (512 tracks) a round.
    expect(s.sequencer.subtasksDispatched).toBeGreaterThanOrEqual(4096 + 512 * rounds);
    expect(s.link.sentRequests).toBeGreaterThanOrEqual(s.sequencer.subtasksDispatched);
  });

  it("GET /metrics: Prometheus text with the pair state and the out-of-sync tracks", async () => {
    const { p } = pair();
    const reply = await p.admin("GET", "/metrics");
    expect(reply.status).toBe(200);
    expect(reply.contentType).toMatch(/^text\/plain/);
    const samples = reply.text.split("\n").filter((l) => l !== "" && !l.startsWith("#"));
    expect(samples.length).toBeGreaterThan(10);
    for (const line of samples)
      expect(line).toMatch(/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$/);
    expect(samples).toContain("peercopy_out_of_sync_tracks 0");
    expect(samples).toContain('peercopy_pair_state_info{state="full-duplex"} 1');
    const s = await p.status();
    expect(samples).toContain(
      `peercopy_sequencer_subtasks_out_of_order ${s.sequencer.subtasksOutOfOrder}`,
    );
  });

  it("POST /suspend: suspended (operator); host writes then mark their tracks", async () => {
    const { p, s } = pair();
    const reply = await p.admin("POST", "/suspend");
    expect(reply.status, reply.text).toBe(200);
    expect(JSON.parse(reply.text)).toMatchObject({ pairState: "suspended" });
    const before = await p.status();
    expect(before).toMatchObject({
      pairState: "suspended",
      suspendReason: "operator",
      outOfSync: { tracks: 0 },
    });

    const writes = SUSPENDED_WRITES.map((o) => `write -P 0xa5 ${o} 4k`);
    const w = await qemuIo(p.uri, writes);
    expect(w.exitCode, describeRun(w)).toBe(0);

    const after = await p.status();
    expect(after.pairState).toBe("suspended");
    expect(after.outOfSync.tracks).toBe(SUSPENDED_WRITES.length);
    expect(after.outOfSync.bytes).toBe(SUSPENDED_WRITES.length * TRACK);
    // Nothing of it went to the secondary.
    const peek = await qemuIo(s.uri, [`read -P 0xa5 ${SUSPENDED_WRITES[0]} 4k`], true);
    expect(peek.stdout, describeRun(peek)).toContain("Pattern verification failed");

    const metrics = await p.admin("GET", "/metrics");
    expect(metrics.text).toContain('peercopy_pair_state_info{state="suspended"} 1');
    expect(metrics.text).not.toContain('state="full-duplex"');
  });

  it("POST /resume: resyncs exactly the marked tracks, then full duplex", async () => {
    const { p, s } = pair();
    const reply = await p.admin("POST", "/resume");
    expect(reply.status, reply.text).toBe(200);
    const st = await p.waitForPairState("full-duplex", 20_000);
    expect(st.outOfSync.tracks).toBe(0);
    expect(st.resync).toMatchObject({
      running: false,
      totalTracks: SUSPENDED_WRITES.length,
      copiedTracks: SUSPENDED_WRITES.length,
    });
    const reads = SUSPENDED_WRITES.map((o) => `read -P 0xa5 ${o} 4k`);
    const peek = await qemuIo(s.uri, reads, true);
    expect(peek.exitCode, describeRun(peek)).toBe(0);
    expect(peek.stdout).not.toContain("Pattern verification failed");
  });

  it("an unknown action is a 404 that lists the real ones", async () => {
    const { p } = pair();
    const reply = await p.admin("POST", "/explode");
    expect(reply.status).toBe(404);
    expect(reply.text).toContain("POST /suspend");
  });

  it("stops cleanly and leaves identical images", async () => {
    const { p, s } = pair();
    await p.stopClean();
    await s.stopClean();
    const same = await compareImages(p.image, s.image);
    expect(same.stdout, describeRun(same)).toContain("Images are identical.");
  });
});
