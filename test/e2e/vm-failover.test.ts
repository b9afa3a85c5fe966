// The VM failover experiment (scripts/vm-experiment) as a test: a Debian
// kernel under qemu (TCG) writes ext4 files to the pair through its kernel NBD
// client, then through qemu's NBD-backed virtio disk; the primary is SIGKILLed
// mid-workload, the secondary promoted, and a fresh guest finds every synced
// file intact and e2fsck clean. The failback resyncs the old primary from the
// promoted side, incrementally, and the images end identical.
import { describe, expect, it } from "vitest";
import { describeResult, runExperiment } from "../../scripts/vm/experiment.js";
import { GUEST_TOOLS } from "../../scripts/vm/guest.js";
import { requireTools } from "../helpers/tools.js";

const ready = requireTools(...GUEST_TOOLS, "cmp");

const BATCHES = 4;
const PER = 8;
// The first run downloads the kernel package and builds the guest (about 20 s).
const TIMEOUT_MS = 300_000;

describe.skipIf(!ready)(
  "VM failover: a Linux guest on the pair, SIGKILL, promote, failback",
  () => {
    it(
      "keeps every synced file through the failover, on both attachment paths",
      async () => {
        const log: string[] = [];
        const result = await runExperiment({
          variants: ["nbd", "virtio"],
          batches: BATCHES,
          per: PER,
          timeoutMs: TIMEOUT_MS - 20_000,
          log: (line) => log.push(line),
        });
        const why = `${log.join("\n")}\n${describeResult(result)}`;
        console.log(describeResult(result));
        expect(result.reports.map((r) => r.variant)).toEqual(["nbd", "virtio"]);
        for (const r of result.reports) {
          expect(r.batchesSynced, why).toBeGreaterThanOrEqual(BATCHES);
          expect(r.filesSynced, why).toBe(r.batchesSynced * PER);
          expect(r.missing, why).toEqual([]);
          expect(r.corrupt, why).toEqual([]);
          expect(r.filesIntact, why).toBe(r.filesSynced);
          expect(r.fsckExit, why).toBe(0);
          expect(r.newWrite, why).toBe(true);
          expect(r.ok, why).toBe(true);
        }
        const f = result.reports[0]?.failback;
        expect(f, why).toBeDefined();
        if (f === undefined) return;
        expect(f.decision, why).toBe("incremental");
        // The crash left at most the activity log's hot extents marked (the pair was in sync).
        expect(f.oldPrimaryMarked, why).toBeLessThanOrEqual(f.activityLogBoundTracks);
        expect(f.changedOnPromoted, why).toBeGreaterThan(0);
        // The union of both sides' marks is copied, and no more: not the whole volume.
        expect(f.tracksResynced, why).toBeGreaterThanOrEqual(
          Math.max(f.changedOnPromoted, f.changedOnOldPrimary),
        );
        expect(f.tracksResynced, why).toBeLessThanOrEqual(
          f.changedOnPromoted + f.changedOnOldPrimary,
        );
        expect(f.tracksResynced, why).toBeLessThan(f.volumeTracks);
        expect(f.imagesIdentical, why).toBe(true);
        expect(result.ok, why).toBe(true);
      },
      TIMEOUT_MS,
    );
  },
);
