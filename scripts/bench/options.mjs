// Command-line options of the NBD server benchmark.
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { WORKLOADS } from "./fio.mjs";
import { sizeOf } from "./images.mjs";
import { SERVERS } from "./servers.mjs";

const HEADLINE = WORKLOADS.filter((w) => w.headline === true)
  .map((w) => w.name)
  .join(",");

export const HELP = `usage: npm run bench -- [options]

fio (ioengine=nbd) against several NBD servers, alternated round-robin, median of N runs.

  --runs N            runs per (workload, server) (default 5)
  --runtime SECONDS   measured seconds per fio run (default 5)
  --ramp SECONDS      unmeasured warm-up per fio run (default 1)
  --size SIZE         image size and working set, K/M/G suffix (default 1G)
  --only LIST         servers, comma-separated (default all: ${SERVERS.map((s) => s.name).join(",")})
  --workloads LIST    workloads, comma-separated (default all, see --list)
  --mirror-workloads LIST
                      the workloads the mirror servers run, or "all" (default
                      ${HEADLINE}: a mirror run costs more time)
  --out DIR           where latest.{md,json} and latest-ratios.svg go
                      (default scripts/bench/results)
  --tmpdir DIR        where the images are made (default the system temp dir)
  --no-prefill        leave the images sparse instead of filling them with data
  --list              print the servers and workloads and exit`;

export class UsageError extends Error {
  code = "EUSAGE";
}

export function parseOptions(argv, repoRoot) {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      runs: { type: "string", default: "5" },
      runtime: { type: "string", default: "5" },
      ramp: { type: "string", default: "1" },
      size: { type: "string", default: "1G" },
      only: { type: "string" },
      workloads: { type: "string" },
      "mirror-workloads": { type: "string", default: HEADLINE },
      out: { type: "string", default: join(repoRoot, "scripts", "bench", "results") },
      tmpdir: { type: "string", default: tmpdir() },
      "no-prefill": { type: "boolean", default: false },
      list: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  return {
    help: values.help,
    list: values.list,
    runs: positiveInt(values.runs, "--runs"),
    runtime: positiveInt(values.runtime, "--runtime"),
    ramp: positiveInt(values.ramp, "--ramp", 0),
    size: parseSize(values.size),
    sizeText: values.size,
    servers: pick(SERVERS, values.only, "--only"),
    workloads: pick(WORKLOADS, values.workloads, "--workloads"),
    mirrorWorkloads:
      values["mirror-workloads"] === "all"
        ? WORKLOADS.map((w) => w.name)
        : pick(WORKLOADS, values["mirror-workloads"], "--mirror-workloads").map((w) => w.name),
    out: resolve(values.out),
    tmpdir: resolve(values.tmpdir),
    prefill: !values["no-prefill"],
  };
}

function positiveInt(text, option, min = 1) {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min)
    throw new UsageError(`${option}: "${text}" must be an integer ≥ ${min}`);
  return n;
}

function parseSize(text) {
  const bytes = sizeOf(text);
  if (!(bytes >= 16 * 2 ** 20))
    throw new UsageError(`--size: "${text}" must be a size of at least 16M, e.g. 1G`);
  return bytes;
}

function pick(all, list, option) {
  if (list === undefined) return all;
  const names = list
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  for (const name of names)
    if (!all.some((x) => x.name === name))
      throw new UsageError(
        `${option}: unknown "${name}"; choose from ${all.map((x) => x.name).join(", ")}`,
      );
  if (names.length === 0) throw new UsageError(`${option}: give at least one name`);
  return all.filter((x) => names.includes(x.name));
}
