// The primary's disk fails (the disk fault filter), seen by a real client:
// a host write to the failing range gets EIO and the rest of it lands; the
// tracks it touched are copied again from the local volume, so both sides hold
// what the disk holds; a host read of a failing range gets EIO and the pair
// stays in full duplex; a resync that cannot read a track suspends the pair
// (local-disk) until the disk is well and the operator resumes.
import { afterAll, describe, expect, it } from "vitest";
import {
  cleanupControllers,
  compareImages,
  controllerTempDir,
  startPair,
  type Primary,
  type PrimaryStatus,
} from "../helpers/controllers.js";
import { runPeercopy } from "../helpers/server.js";
import { describeRun, requireTools, run } from "../helpers/tools.js";

const ready = requireTools("qemu-io", "qemu-img");

interface FaultStatus extends PrimaryStatus {
  readonly stateDetail: string | null;
  readonly diskFaults: Record<string, number | null>;
  readonly errors: Record<string, number>;
}

function qemuIo(uri: string, ...commands: string[]) {
  const args = ["-f", "raw", "-t", "none", uri];
  for (const c of commands) args.push("-c", c);
  return run("qemu-io", args, { timeoutMs: 30_000 });
}

async function disk(primary: Primary, ...settings: string[]) {
  const admin = primary.adminAddress();
  const r = await runPeercopy(["disk", "set", "--admin", admin, ...settings]);
  expect(r.exitCode, describeRun(r)).toBe(0);
  return JSON.parse(r.stdout) as { diskFaults: Record<string, number | null> };
}

async function control(primary: Primary, verb: string) {
  const admin = primary.adminAddress();
  const r = await runPeercopy([verb, "--admin", admin]);
  expect(r.exitCode, describeRun(r)).toBe(0);
}

describe.skipIf(!ready)("disk faults on the primary", () => {
  afterAll(cleanupControllers);

  it("write and read errors reach the host as EIO; the pair stays truthful and converges", async () => {
    const dir = await controllerTempDir();
    const { primary, secondary } = await startPair(dir, {
      mode: "sync",
      size: "16M",
      extraArgs: ["--disk-faults"],
    });
    const status = async () => (await primary.status()) as FaultStatus;
    const first = await qemuIo(primary.uri, "write -P 0x11 0 1M");
    expect(first.exitCode, describeRun(first)).toBe(0);

    // A write over tracks 3 and 4 (64 KiB tracks); the disk fails track 4's part.
    const set = await disk(primary, "--write-error-range", "256K:4K");
    expect(set.diskFaults).toMatchObject({ writeErrorRangeOffset: 262144 });
    const failed = await qemuIo(primary.uri, "write -P 0x22 192k 128k");
    expect(`${failed.stdout}${failed.stderr}`).toMatch(/Input\/output error/);
    const healed = await primary.waitForStatus(
      (s) => s.pairState === "full-duplex" && s.outOfSync.tracks === 0 && !s.resync.running,
      "the failed write's tracks copied again",
      15_000,
    );
    expect(healed.resync.totalTracks).toBeGreaterThanOrEqual(1);
    let s = await status();
    expect(s.errors.hostWrites).toBe(1);
    expect(s.diskFaults.injectedWriteErrors).toBe(1);
    // What the disk took stands, what it refused does not: and the secondary agrees.
    const check = await qemuIo(primary.uri, "read -P 0x22 192k 64k", "read -P 0x11 256k 64k");
    expect(check.stdout, describeRun(check)).not.toMatch(/Pattern verification failed|error/i);
    expect(check.stdout).toMatch(/read 65536\/65536 bytes at offset 262144/);

    // Read errors: the host read fails; nothing differs between the sides.
    await disk(primary, "--write-error-range", "off", "--read-error-range", "512K:4K");
    const bad = await qemuIo(primary.uri, "read -P 0x11 512k 4k");
    expect(`${bad.stdout}${bad.stderr}`).toMatch(/Input\/output error/);
    const good = await qemuIo(primary.uri, "read -P 0x11 516k 4k");
    expect(good.stdout, describeRun(good)).toMatch(/read 4096\/4096 bytes at offset 528384/);
    s = await status();
    expect(s.errors.hostReads).toBe(1);
    expect(s.pairState).toBe("full-duplex");

    // A resync that cannot read a marked track suspends the pair and says why.
    await control(primary, "suspend");
    const marked = await qemuIo(primary.uri, "write -P 0x33 520k 4k");
    expect(marked.exitCode, describeRun(marked)).toBe(0);
    await control(primary, "resume");
    const stuck = (await primary.waitForStatus(
      (st) => st.suspendReason === "local-disk",
      "suspended for the local disk",
      15_000,
    )) as FaultStatus;
    expect(stuck.pairState).toBe("suspended");
    expect(stuck.stateDetail).toContain("cannot read track 8");
    expect(stuck.outOfSync.tracks).toBe(1);
    expect((await status()).errors.resyncReads).toBe(1);

    // The disk is well again: resume copies the track and the pair is whole.
    await disk(primary, "--reset");
    await control(primary, "resume");
    await primary.waitForPairState("full-duplex", 15_000);
    await primary.stopClean();
    await secondary.stopClean();
    const same = await compareImages(primary.image, secondary.image);
    expect(same.stdout, describeRun(same)).toContain("Images are identical.");
    const after = await run("qemu-io", [
      "-f",
      "raw",
      secondary.image,
      "-c",
      "read -P 0x33 520k 4k",
      "-c",
      "read -P 0x11 256k 64k",
    ]);
    expect(after.stdout, describeRun(after)).not.toMatch(/Pattern verification failed/);
  }, 60_000);

  it("bad --disk-* options and settings are usage errors naming the option", async () => {
    const r = await runPeercopy([
      "primary",
      "--memory",
      "16M",
      "--remote",
      "nbd://127.0.0.1:1/replication",
      "--disk-write-error-rate",
      "1.5",
    ]);
    expect(r.exitCode, describeRun(r)).toBe(2);
    expect(r.stderr).toContain('--disk-write-error-rate: "1.5" is not a fraction from 0 to 1');
    const set = await runPeercopy(["disk", "set", "--admin", "127.0.0.1:1", "--write-delay", "x"]);
    expect(set.exitCode, describeRun(set)).toBe(2);
    expect(set.stderr).toContain('--write-delay: "x" is not a duration');
  }, 30_000);
});
