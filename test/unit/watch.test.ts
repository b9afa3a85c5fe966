import { describe, expect, it } from "vitest";
import { summary } from "../../src/cli/watch.js";

describe("status --watch summary line", () => {
  it("shows the pair state with its reason, out-of-sync size, lag and link", () => {
    const line = summary({
      pairState: "suspended",
      suspendReason: "link",
      mode: "async",
      outOfSync: { tracks: 3, bytes: 3 * 65536 },
      lag: { writes: 2, bytes: 1048576, ms: 250 },
      link: { state: "down", inFlight: 0, queued: 0 },
    });
    expect(line).toBe(
      "suspended (link) async | out of sync 3 tracks (0.2 MiB) | lag 2 writes 1.0 MiB 250 ms | link down in flight 0 queued 0",
    );
  });

  it("leaves out a reason when there is none", () => {
    expect(summary({ pairState: "full-duplex", mode: "sync" })).toMatch(/^full-duplex sync \| /);
  });
});
