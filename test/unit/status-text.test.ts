import { describe, expect, it } from "vitest";
import { bytes, duration, formatStatus } from "../../src/cli/status-text.js";

const KiB = 1024;
const MiB = 1024 * KiB;

describe("peercopy status text", () => {
  it("a running resync shows its percentage, rate, ETA and rate limit", () => {
    const text = formatStatus(
      {
        role: "primary",
        pairState: "duplex-pending",
        mode: "sync",
        trackSize: 64 * KiB,
        host: { uri: "nbd://127.0.0.1:10809/", volume: "file a.img", size: 64 * MiB },
        resync: {
          running: true,
          totalTracks: 1000,
          copiedTracks: 250,
          bytesPerSecond: 10 * MiB,
          etaSeconds: 95,
          rateLimit: 20 * MiB,
        },
      },
      { color: false },
    );
    expect(text).toContain(
      "  resync      25% (250/1000 tracks), 10.0 MiB/s, ETA 1m 35s, limit 20.0 MiB/s\n",
    );
    expect(text).toContain("  out of sync 0 tracks of 1024 (0 B)\n");
  });

  it("split brain is red on a terminal, with the detail the primary gave", () => {
    const text = formatStatus(
      { role: "primary", pairState: "split-brain", stateDetail: "both sides wrote" },
      { color: true },
    );
    expect(text).toContain("  pair        \x1b[31msplit-brain\x1b[0m (both sides wrote)\n");
    expect(formatStatus({ pairState: "split-brain" }, { color: false })).not.toContain("\x1b[");
  });

  it("errors name the counts and the link's last error", () => {
    const text = formatStatus(
      {
        role: "primary",
        pairState: "suspended",
        suspendReason: "link",
        link: { state: "down", lastError: "connect ECONNREFUSED 127.0.0.1:1" },
        errors: { hostWrites: 0, link: 3 },
      },
      { color: false },
    );
    expect(text).toContain("  pair        suspended (link)\n");
    expect(text).toContain("  errors      3 link errors; last: connect ECONNREFUSED 127.0.0.1:1\n");
  });

  it("emulated faults show what is set; local disk errors are counted", () => {
    const text = formatStatus(
      {
        role: "primary",
        pairState: "suspended",
        suspendReason: "local-disk",
        link: { state: "up", emulation: { latencyMs: 5, jitterMs: 0, errorRangeOffset: null } },
        diskFaults: { readErrorRate: 0, readErrorRangeOffset: 0, readErrorRangeLength: 64 * KiB },
        errors: { hostWrites: 1, hostReads: 2, resyncReads: 1, link: 0 },
      },
      { color: false },
    );
    expect(text).toContain("  emulated    link: latencyMs 5; disk: readErrorRange 0 B+64.0 KiB\n");
    expect(text).toContain(
      "  errors      1 host write error, 2 host read errors, 1 resync read error\n",
    );
  });

  it("a promoted secondary says hosts may write", () => {
    const text = formatStatus(
      {
        role: "primary",
        promoted: true,
        pairState: "simplex",
        primarySeenMsAgo: null,
        metadata: null,
      },
      { color: false },
    );
    expect(text).toContain("(promoted: hosts may write, changes are recorded)");
    expect(text).toContain("  primary     never connected\n");
    expect(text).toContain("  metadata    none (marks are kept in memory only)\n");
  });

  it("sizes and durations", () => {
    expect(bytes(512)).toBe("512 B");
    expect(bytes(1536)).toBe("1.5 KiB");
    expect(bytes(1024 ** 4)).toBe("1.0 TiB");
    expect(duration(59)).toBe("59s");
    expect(duration(3700)).toBe("1h 1m");
  });
});
