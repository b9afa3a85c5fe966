// fio's NBD engine: random writes at queue depth 32 with checksum verification,
// and a graceful stop (SIGTERM) in the middle of a run.
import { randomBytes } from "node:crypto";
import { stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  createSparseFile,
  serveForTest,
  serverKind,
  tempDirForTest,
  type ServeOptions,
} from "../helpers/server.js";
import { describeRun, requireTools, run, runOk, type RunResult } from "../helpers/tools.js";

const ready = requireTools("fio", "nbdcopy", "cmp");
const MiB = 1024 * 1024;

interface FioJob {
  error: number;
  write: { io_bytes: number };
  read: { io_bytes: number };
}

/** fio prints "fio: connected to NBD server" on stdout before its JSON. */
function parseFio(result: RunResult): FioJob {
  const start = result.stdout.indexOf("{");
  expect(start, describeRun(result)).toBeGreaterThanOrEqual(0);
  const report = JSON.parse(result.stdout.slice(start)) as { jobs: FioJob[] };
  const [job] = report.jobs;
  if (job === undefined) throw new Error(`no job in fio output\n${describeRun(result)}`);
  return job;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

describe.skipIf(!ready)(`fio against ${serverKind()}`, () => {
  const backends: [string, (dir: string) => Promise<ServeOptions>][] = [
    [
      "file",
      async (dir) => {
        const image = join(dir, "disk.img");
        await createSparseFile(image, 128 * MiB);
        return { image };
      },
    ],
    ["memory", () => Promise.resolve({ memory: "128M" })],
  ];
  for (const [name, options] of backends) {
    it(`verifies 64 MiB of random 4k writes at queue depth 32 (${name})`, async () => {
      const dir = await tempDirForTest();
      const server = await serveForTest(await options(dir));
      const result = await run(
        "fio",
        [
          "--name=v",
          "--ioengine=nbd",
          `--uri=${server.uri}`,
          "--rw=randwrite",
          "--bs=4k",
          "--iodepth=32",
          "--size=64M",
          "--verify=crc32c",
          "--do_verify=1",
          "--fsync=64",
          "--verify_state_save=0",
          "--output-format=json",
        ],
        // fio drops state files in its working directory: keep them out of the tree.
        { timeoutMs: 120_000, cwd: dir },
      );
      expect(result.exitCode, describeRun(result)).toBe(0);
      // Verification failures are reported on stderr ("verify: bad magic header …").
      expect(result.stderr, describeRun(result)).not.toMatch(/verify|bad magic/i);
      const job = parseFio(result);
      expect(job.error).toBe(0);
      expect(job.write.io_bytes).toBe(64 * MiB);
      expect(job.read.io_bytes).toBe(64 * MiB);
    }, 150_000);
  }

  it("stops on SIGTERM during a fio run with exit 0, keeping the data written before", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "disk.img");
    const pattern = join(dir, "pattern.bin");
    await createSparseFile(image, 64 * MiB);
    await writeFile(pattern, randomBytes(16 * MiB));
    const server = await serveForTest({ image });
    await runOk("nbdcopy", ["--flush", pattern, server.uri]);

    const fio = run(
      "fio",
      [
        "--name=load",
        "--ioengine=nbd",
        `--uri=${server.uri}`,
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=32",
        "--offset=16M",
        "--size=32M",
        "--time_based",
        "--runtime=30",
      ],
      { timeoutMs: 45_000, cwd: dir },
    );
    // Wait for fio's writes to reach the file: its allocated size grows past
    // the pattern. Bounded: 20 s.
    const deadline = Date.now() + 20_000;
    let allocated = 0;
    while (Date.now() < deadline) {
      allocated = (await stat(image)).blocks * 512;
      if (allocated > 17 * MiB) break;
      await sleep(100);
    }
    expect(allocated, "fio never wrote to the image").toBeGreaterThan(17 * MiB);

    // Requests in flight are finished, but the server must not wait for fio to
    // hang up: it stops by itself, well before fio's 30 s run would end.
    const stopping = Date.now();
    const exit = await server.stop("SIGTERM", 20_000);
    const seconds = ((Date.now() - stopping) / 1000).toFixed(1);
    expect(exit, `after ${seconds} s (SIGKILL at 20 s)\n${server.log().slice(-4000)}`).toEqual({
      exitCode: 0,
      signal: undefined,
    });
    // fio loses its server and ends with an error; it must not hang.
    const load = await fio;
    expect(load.timedOut, describeRun(load)).toBe(false);

    const same = await run("cmp", ["-n", String(16 * MiB), pattern, image]);
    expect(same.exitCode, describeRun(same)).toBe(0);
  }, 90_000);
});
