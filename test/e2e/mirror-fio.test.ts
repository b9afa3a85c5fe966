// fio writes with crc32c verification through the primary; after the primary's
// clean stop, fio's verify-only pass reads the same blocks from the secondary's
// read-only host export and checks every checksum there.
import { afterAll, describe, expect, it } from "vitest";
import {
  cleanupControllers,
  controllerTempDir,
  fio,
  startPair,
  startSecondary,
  type FioRun,
} from "../helpers/controllers.js";
import { join } from "node:path";
import { describeRun, requireTools, run } from "../helpers/tools.js";

const ready = requireTools("fio", "cmp");
const MiB = 1024 * 1024;

const VERIFY = ["--verify=crc32c", "--verify_state_save=0"];

/** `write` undefined: not checked (a verify-only pass counts the writes it skips). */
function expectClean(load: FioRun, bytes: { read: number; write?: number }): void {
  const text = describeRun(load.result);
  expect(load.result.exitCode, text).toBe(0);
  // Verification failures are reported on stderr ("verify: bad magic header …").
  expect(load.result.stderr, text).not.toMatch(/verify|bad magic|crc/i);
  expect(load.jobs.length, text).toBeGreaterThan(0);
  for (const job of load.jobs) expect(job.error, `${job.jobname}\n${text}`).toBe(0);
  const sum = (f: (j: (typeof load.jobs)[number]) => number): number =>
    load.jobs.reduce((n, j) => n + f(j), 0);
  if (bytes.write !== undefined)
    expect(
      sum((j) => j.write.io_bytes),
      text,
    ).toBe(bytes.write);
  expect(
    sum((j) => j.read.io_bytes),
    text,
  ).toBe(bytes.read);
}

const cases: { name: string; mode: "sync" | "async"; jobs: string[]; bytes: number }[] = [
  {
    name: "64 MiB of random 4k writes at queue depth 32 (sync)",
    mode: "sync",
    jobs: ["--name=rand", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=64M"],
    bytes: 64 * MiB,
  },
  {
    // The sequential job starts 4 KiB past a track boundary: each 1 MiB write
    // spans 17 tracks of 64 KiB, split unevenly.
    name: "random 4k writes mixed with 1 MiB sequential writes across tracks (async)",
    mode: "async",
    jobs: [
      ...["--name=rand", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=32M"],
      ...["--offset=0", "--name=seq", "--rw=write", "--bs=1M", "--iodepth=8"],
      ...["--size=64M", `--offset=${96 * MiB + 4096}`],
    ],
    bytes: 96 * MiB,
  },
];

describe.skipIf(!ready)("fio verification through the primary, then on the secondary", () => {
  afterAll(cleanupControllers);

  for (const c of cases) {
    it(
      c.name,
      async () => {
        const dir = await controllerTempDir();
        const { primary, secondary } = await startPair(dir, { mode: c.mode });

        const written = await fio(primary.uri, [...VERIFY, "--do_verify=1", ...c.jobs], dir);
        expectClean(written, { write: c.bytes, read: c.bytes });
        // Every payload gathered from socket chunks went back to the pool once the
        // secondary had it; the 1 MiB writes arrive in pieces, so the pool was used.
        const drained = (await primary.waitForStatus(
          (s) => s.lag.writes === 0,
          "the link drained",
          30_000,
        )) as unknown as { payloads: { held: number; pooledBytes: number } };
        expect(drained.payloads.held).toBe(0);
        if (c.mode === "async") expect(drained.payloads.pooledBytes).toBeGreaterThan(0);
        await primary.stopClean();

        // Same jobs, same random seed: fio replays the offsets and only reads and checks.
        const verified = await fio(secondary.uri, [...VERIFY, "--verify_only=1", ...c.jobs], dir);
        expectClean(verified, { read: c.bytes });
        await secondary.stopClean();

        const same = await run("cmp", [primary.image, secondary.image], { timeoutMs: 60_000 });
        expect(same.exitCode, describeRun(same)).toBe(0);
      },
      120_000,
    );
  }

  it("the verify-only pass does catch blocks the secondary lacks", async () => {
    // Guards the check above: on an image fio never wrote, verify_only must fail.
    const dir = await controllerTempDir();
    const secondary = await startSecondary({ image: join(dir, "secondary.img") });
    const jobs = ["--name=rand", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=4M"];
    const verified = await fio(secondary.uri, [...VERIFY, "--verify_only=1", ...jobs], dir);
    const failed = verified.result.exitCode !== 0 || verified.jobs.some((j) => j.error !== 0);
    expect(failed, describeRun(verified.result)).toBe(true);
    expect(verified.result.stderr).toMatch(/verify: bad magic header/);
    await secondary.stopClean();
  });
});
