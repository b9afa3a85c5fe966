// Machine facts, and the files written to the results directory.
import { mkdir, writeFile } from "node:fs/promises";
import { availableParallelism, cpus, loadavg, release, totalmem, type } from "node:os";
import { join } from "node:path";
import { ratioChart } from "./chart.mjs";
import {
  comparisonRows,
  fmt,
  markdownTable,
  mirrorRows,
  ratioLegend,
  tableRows,
} from "./report.mjs";
import { runSync } from "./proc.mjs";
import { cpuRows, targetTable } from "./targets.mjs";

const TOOL_VERSIONS = [
  ["fio", ["--version"]],
  ["nbdkit", ["--version"]],
  ["qemu-nbd", ["--version"]],
  ["qemu-storage-daemon", ["--version"]],
];

/** What the numbers depend on, recorded next to them. */
export function machineFacts(repoRoot, tmpDir) {
  const tools = {};
  for (const [cmd, args] of TOOL_VERSIONS) tools[cmd] = runSync(cmd, args)?.split("\n")[0] ?? null;
  const dirty = runSync("git", ["-C", repoRoot, "status", "--porcelain", "--", "src", "nbd"]);
  const commit = runSync("git", ["-C", repoRoot, "rev-parse", "--short", "HEAD"]);
  return {
    nproc: availableParallelism(),
    cpu: cpus()[0]?.model ?? "unknown",
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${type()} ${release()}`,
    node: process.version,
    tools,
    peercopyCommit:
      commit === undefined ? null : commit + (dirty ? " (with uncommitted changes)" : ""),
    imageFilesystem:
      runSync("findmnt", ["-n", "-o", "FSTYPE", "--target", tmpDir]) ??
      runSync("stat", ["-f", "-c", "%T", tmpDir]) ??
      "unknown",
    loadAverageAtStart: loadavg().map((v) => Math.round(v * 100) / 100),
  };
}

/**
 * Write latest.json, latest.md and latest-ratios.svg.
 * @returns {Promise<string[]>} the paths written
 */
export async function writeResults(outDir, data) {
  await mkdir(outDir, { recursive: true });
  const json = join(outDir, "latest.json");
  const md = join(outDir, "latest.md");
  const svg = join(outDir, "latest-ratios.svg");
  await writeFile(json, `${JSON.stringify(data, jsonNumbers, 2)}\n`);
  await writeFile(md, markdown(data));
  const all = [...data.ratios, ...data.comparisons];
  const subjects = listText([...new Set(all.map((r) => r.subject))]);
  const references = listText([...new Set(all.map((r) => r.reference))]);
  const runs = data.config.runs === 1 ? "1 run" : `${data.config.runs} runs`;
  await writeFile(
    svg,
    ratioChart({
      title:
        all.length === data.ratios.length
          ? `${subjects} relative to ${references} (median of ${runs} each)`
          : `peercopy and its mirrors relative to other servers (median of ${runs} each)`,
      subtitle: `${data.date.slice(0, 10)} · ${data.machine.nproc} CPUs · ${data.machine.kernel} · node ${data.machine.node} · ${data.config.runtime} s per run, ${data.config.sizeText} image`,
      ratioList: all,
      workloads: data.workloads,
    }),
  );
  return [md, json, svg];
}

/** ["a", "b", "c"] → "a, b and c" */
function listText(items) {
  return items.length < 2 ? items.join("") : `${items.slice(0, -1).join(", ")} and ${items.at(-1)}`;
}

/** NaN and Infinity are not JSON; a missing number is null. */
function jsonNumbers(_key, value) {
  return typeof value === "number" && !Number.isFinite(value) ? null : value;
}

function markdown(data) {
  const m = data.machine;
  const c = data.config;
  const rows = tableRows(data.summary, data.ratios, data.workloads);
  const mirrors = mirrorRows(data.summary, data.workloads);
  const load = m.loadAverageDuringRuns;
  const loadText =
    load === null || load === undefined
      ? "–"
      : `${fmt(load.min, 1)} / ${fmt(load.median, 1)} / ${fmt(load.max, 1)}`;
  const mirrorSection =
    mirrors.length < 2
      ? ""
      : `
## Mirrors

${mirrorText(data)}

${markdownTable(mirrors)}

${data.comparisons.length === 0 ? "" : markdownTable(comparisonRows(data.comparisons, data.workloads))}

Ratios: subject ÷ reference, median ÷ median. IOPS and MiB/s: above 1 is better for the
subject; p99 and RSS: below 1 is better. The RSS ratio compares the sums over each
side's processes (primary + secondary; qemu-storage-daemon + nbdkit; peercopy serve alone).
`;
  const servers = data.servers.map(
    (s) => `- **${s.name}** — ${s.description}:\n  \`${(s.commands ?? []).join("` + `")}\``,
  );
  const workloads = data.workloads.map(
    (w) => `- **${w.label}** (\`${w.name}\`): \`--rw=${w.rw} --bs=${w.bs} --iodepth=${w.iodepth}\``,
  );
  const targets = data.targets === undefined ? [] : targetTable(data.targets, data.workloads);
  const cpu = cpuRows(data.summary, data.workloads, c);
  const targetSection =
    targets.length < 2
      ? ""
      : `
## Targets

${markdownTable(targets)}

Each ratio is median ÷ median of the two servers in this run, except the "worst repetition"
row: each of the subject's runs against the reference's run of the same repetition, the
lowest of those. "drained": what reached nbdkit per second during the async run (what fio
wrote less the lag left at its end, over ramp + runtime) against the sync mirror's rate to
the same nbdkit. A "–" in met? means that row's servers were not in this run.
${
  cpu.length < 2
    ? ""
    : `
CPU time per request of each process of a mirror (utime + stime from \`/proc/PID/stat\`
over the fio run, ramp included, divided by the requests of ramp + runtime):

${markdownTable(cpu)}
`
}`;
  return `# NBD server benchmark — latest results

${data.date} · \`npm run bench\` (scripts/bench/nbd-bench.mjs) · median of ${c.runs} runs per cell,
workload by workload, the servers alternated round-robin within each repetition.

${markdownTable(rows)}

${ratioLegend(data.ratios)} IOPS spread: (max − min) ÷ median of the runs, a measure of
the noise on the machine during the run.
${targetSection}
The 1-minute load average at the start of the runs was ${loadText} (min / median / max) on
${m.nproc} CPUs: above ${m.nproc}, other work on the machine was competing with the servers and fio.
${mirrorSection}
![ratios](latest-ratios.svg)

## Setup

- fio \`--ioengine=nbd\`, one job, one connection, \`--time_based --runtime=${c.runtime} --ramp_time=${c.ramp}\`,
  \`--size=${c.size}\` (${c.sizeText} working set), \`--randrepeat=1 --norandommap\`; p99 is fio's
  completion latency (clat) 99th percentile.
- Each server gets its own ${c.sizeText} image (a mirror two: primary and secondary, identical) in ${m.imageFilesystem} temp space,
  ${c.prefill ? "pre-filled with non-zero data and synced before the first run, so that every read returns real data (no server can answer from a hole) and no write allocates blocks" : "left sparse (--no-prefill)"}.
- Every run starts its server afresh and ends it afterwards (the mirrors are kept between the
  runs of a workload, see above); peak RSS is VmHWM of the server's process(es), read just
  before the stop. The images are fsynced after each run so that no server's dirty pages are
  written back during another server's run.
${workloads.join("\n")}

## Servers

${servers.join("\n")}

## Machine

| fact | value |
| --- | --- |
| date | ${data.date} |
| CPUs (nproc) | ${m.nproc} × ${m.cpu} |
| memory | ${m.memoryGiB} GiB |
| kernel | ${m.kernel} |
| node | ${m.node} |
| fio | ${m.tools.fio ?? "–"} |
| nbdkit | ${m.tools.nbdkit ?? "–"} |
| qemu-nbd | ${m.tools["qemu-nbd"] ?? "–"} |
| qemu-storage-daemon | ${m.tools["qemu-storage-daemon"] ?? "–"} |
| peercopy commit | ${m.peercopyCommit ?? "–"} |
| load average at start / end | ${m.loadAverageAtStart.join(" ")} / ${(m.loadAverageAtEnd ?? []).join(" ")} |
| 1-min load average at run starts (min / median / max) | ${loadText} |
| wall time | ${fmt(data.wallSeconds / 60, 1)} min |
`;
}

function mirrorText(data) {
  const c = data.config;
  const workloads = c.mirrorWorkloads ?? [];
  return `The mirrored configurations ran ${workloads.map((w) => `\`${w}\``).join(" and ")} only
(\`--mirror-workloads\`). Each is started at its first run of a workload and kept for that
workload's later runs (its initial copy of the pre-filled ${c.sizeText} image takes far longer
than a fio run; "initial copy s" is the time to the end of that copy). Before
every run the copy must be complete and in sync (peercopy: \`GET /status\` says
\`"pairState": "full-duplex"\` with no lag; qemu-storage-daemon: the mirror job is ready with
offset = len), the images are fsynced, and the processes' peak RSS is reset
(\`/proc/PID/clear_refs\`), so the peak RSS is the run's own. Right after fio the lag is read
(peercopy: \`lag.bytes\` and \`lag.ms\` of \`/status\`; qemu-storage-daemon: \`len − offset\`
of \`query-block-jobs\`, the bytes still to copy), then the run waits until the copy has
caught up ("drain") before the next server's run. peercopy's async configurations run with
\`--max-lag 64M\` (hosts are slowed down at the bound); qemu-storage-daemon's async mirror has
no bound, so "ended unsuspended" is all its bound can say.`;
}
