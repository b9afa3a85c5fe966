// Checks that the benchmark's mirrored configurations really mirror: for each one,
// start it on two identical pre-filled images, run a short fio random write through
// it, wait until the copy has caught up, stop everything, then compare the images.
// The primary must differ from a pristine copy (fio's writes landed) and the
// secondary must equal the primary (they were copied).
//
//   npm run build && node scripts/bench/mirror-check.mjs [--size 256M] [--only LIST]
//                                                        [--workload seqwrite-1m-qd8]
import { randomBytes } from "node:crypto";
import { copyFile, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { WORKLOADS } from "./fio.mjs";
import { fillImage } from "./images.mjs";
import { killAllSync, runSync, stopAll } from "./proc.mjs";
import { ServerPool, runOne } from "./runner.mjs";
import { SERVERS } from "./servers.mjs";

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    size: { type: "string", default: "256M" },
    only: { type: "string" },
    workload: { type: "string", default: "randwrite-4k-qd32" },
  },
});
const size = Number.parseInt(values.size, 10) * 2 ** 20;
const names = values.only?.split(",");
const servers = SERVERS.filter(
  (s) => s.mirror === true && (names === undefined || names.includes(s.name)),
);
const workload = WORKLOADS.find((w) => w.name === values.workload);
if (workload === undefined || workload.rw.endsWith("read"))
  throw new Error(
    `--workload: choose a write workload: ${WORKLOADS.map((w) => w.name).join(", ")}`,
  );
process.on("exit", killAllSync);

const tmp = await mkdtemp(join(tmpdir(), "peercopy-mirror-check-"));
let failures = 0;
try {
  const chunk = randomBytes(2 ** 20);
  for (const server of servers) {
    const dir = join(tmp, server.name);
    await mkdir(dir);
    const paths = { primary: join(dir, "primary.img"), secondary: join(dir, "secondary.img") };
    const pristine = join(dir, "pristine.img");
    await fillImage(paths.primary, size, chunk);
    await copyFile(paths.primary, paths.secondary);
    await copyFile(paths.primary, pristine);
    const pool = new ServerPool(REPO_ROOT);
    const record = await runOne(
      { rep: 0, workload, server },
      { dir, paths },
      { size, runtime: 3, ramp: 0 },
      pool,
      new Map(),
    );
    await pool.closeAll();
    const written = runSync("cmp", ["-s", paths.primary, pristine]) === undefined;
    const same = runSync("cmp", [paths.primary, paths.secondary]) !== undefined;
    const ok = record.error === undefined && written && same;
    if (!ok) failures++;
    console.log(
      `${ok ? "ok  " : "FAIL"} ${server.name.padEnd(22)} ${Math.round(record.iops ?? 0)} IOPS, ` +
        `${record.ios ?? 0} writes; primary ${written ? "changed" : "UNCHANGED"}; ` +
        `secondary ${same ? "identical to the primary" : "DIFFERS from the primary"}` +
        (record.mirror === undefined
          ? ""
          : `; lag at end ${record.mirror.lagBytes} B, drained in ${record.mirror.drainSeconds} s`) +
        (record.error === undefined ? "" : `\n  ${record.error}`),
    );
  }
} finally {
  await stopAll(2000);
  await rm(tmp, { recursive: true, force: true });
}
console.log(`${servers.length - failures} passed, ${failures} failed`);
process.exitCode = failures === 0 ? 0 : 1;
