// Losing the secondary (SIGKILL) under host load. With the default policy the
// pair suspends (reason "link"), host I/O goes on, the primary reconnects with
// growing back-off, and once the secondary is back on the same port it resyncs
// the marked tracks and reaches full duplex, leaving identical images after a
// clean stop. With --on-link-loss fail, host writes fail with EIO instead and
// reads are still served.
import { afterAll, describe, expect, it } from "vitest";
import {
  cleanupControllers,
  compareImages,
  controllerTempDir,
  fio,
  sleep,
  startPair,
  startSecondary,
  type LogRecord,
  type Primary,
} from "../helpers/controllers.js";
import { describeRun, nbdshScript, py, requireTools, run } from "../helpers/tools.js";

const ready = requireTools("fio", "qemu-img", "qemu-io", "nbdsh");
const RECONNECTING = "link down; reconnecting";

/** The primary's "link down; reconnecting" records after the first `from` records. */
async function reconnectAttempts(
  primary: Primary,
  from: number,
  atLeast: number,
): Promise<LogRecord[]> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const found = primary
      .records()
      .slice(from)
      .filter((r) => r.msg === RECONNECTING);
    if (found.length >= atLeast) return found;
    if (Date.now() > deadline)
      throw new Error(`only ${found.length} reconnection attempts logged\n${primary.log()}`);
    await sleep(50);
  }
}

describe.skipIf(!ready)("link loss", () => {
  afterAll(cleanupControllers);

  for (const mode of ["async", "sync"] as const) {
    it(`${mode}: suspends on SIGKILL of the secondary, reconnects, resyncs to identical images`, async () => {
      const dir = await controllerTempDir();
      const { primary, secondary } = await startPair(dir, { mode });
      const dispatchedBefore = (await primary.status()).sequencer.subtasksDispatched;
      const load = fio(
        primary.uri,
        [
          ...["--name=load", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=32M"],
          ...["--time_based", "--runtime=6"],
        ],
        dir,
      );
      await primary.waitForStatus(
        (s) => s.sequencer.subtasksDispatched > dispatchedBefore + 500,
        "host writes reaching the link",
        10_000,
      );

      const logged = primary.records().length;
      await secondary.stop("SIGKILL");
      const suspended = await primary.waitForStatus(
        (s) => s.pairState === "suspended" && s.outOfSync.tracks > 0,
        "suspended with tracks out of sync",
        10_000,
      );
      expect(suspended.suspendReason).toBe("link");
      expect(suspended.link.state).not.toBe("up");

      const attempts = await reconnectAttempts(primary, logged, 4);
      const numbers = attempts.map((r) => r.attempt);
      const delays = attempts.map((r) => r.retryInMs);
      expect(numbers.slice(0, 4), JSON.stringify(attempts)).toEqual([1, 2, 3, 4]);
      for (let i = 1; i < 4; i++)
        expect(Number(delays[i]), JSON.stringify(delays)).toBeGreaterThan(Number(delays[i - 1]));

      const back = await startSecondary({ image: secondary.image, port: secondary.port });
      expect(back.replicationUri).toBe(secondary.replicationUri);

      const result = await load;
      expect(result.result.exitCode, describeRun(result.result)).toBe(0);
      expect(result.jobs[0]?.error, describeRun(result.result)).toBe(0);
      const healed = await primary.waitForPairState("full-duplex", 30_000);
      expect(healed.outOfSync.tracks).toBe(0);
      expect(healed.link.reconnects).toBeGreaterThan(0);

      await primary.stopClean();
      await back.stopClean();
      const same = await compareImages(primary.image, secondary.image);
      expect(same.stdout, describeRun(same)).toContain("Images are identical.");
    }, 90_000);
  }

  it("sync with --on-link-loss fail: host writes fail with EIO, reads are still served", async () => {
    const dir = await controllerTempDir();
    const { primary, secondary } = await startPair(dir, { mode: "sync", onLinkLoss: "fail" });
    const before = await run(
      "qemu-io",
      ["-f", "raw", "-t", "writeback", primary.uri, "-c", "write -P 0x42 0 64k"],
      { timeoutMs: 30_000 },
    );
    expect(before.exitCode, describeRun(before)).toBe(0);

    await secondary.stop("SIGKILL");
    const st = await primary.waitForStatus(
      (s) => s.pairState === "suspended",
      "suspended after the link loss",
      10_000,
    );
    expect(st.suspendReason).toBe("link");

    const outcome = await nbdshScript(
      [
        `h.connect_uri(${py(primary.uri)})`,
        `attempt("write", lambda: h.pwrite(b"x" * 4096, 1048576))`,
        `attempt("zero", lambda: h.zero(65536, 2097152))`,
        `attempt("read", lambda: h.pread(65536, 0) == b"\\x42" * 65536)`,
        `attempt("flush", lambda: h.flush())`,
      ].join("\n"),
      { timeoutMs: 30_000 },
    );
    expect(outcome.write).toMatchObject({ ok: false, errno: "EIO" });
    expect(outcome.zero).toMatchObject({ ok: false, errno: "EIO" });
    expect(outcome.read).toEqual({ ok: true, value: true });
    expect(primary.exited).toBe(false);
    expect((await primary.status()).pairState).toBe("suspended");
    await primary.stopClean();
  }, 60_000);
});
