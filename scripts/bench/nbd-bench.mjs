// NBD server benchmark: fio (ioengine=nbd) against peercopy serve, nbdkit's file
// plugin and qemu-nbd, on identical pre-filled images, servers alternated round-robin
// within each repetition so that the noise of a shared machine falls on all of them.
// The result of a (workload, server) cell is the median of its runs.
//
//   npm run build && npm run bench [-- --runs 5 --runtime 5 --only peercopy,nbdkit]
//
// See scripts/bench/README.md for what is measured and how to read the results.
import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { loadavg } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { fillImage, sparseImage } from "./images.mjs";
import { HELP, UsageError, parseOptions } from "./options.mjs";
import { killAllSync, runSync, stopAll } from "./proc.mjs";
import {
  comparisonRows,
  comparisons,
  fmt,
  loadSummary,
  mirrorRows,
  ratioLegend,
  ratios,
  summarize,
  tableRows,
  textTable,
} from "./report.mjs";
import { machineFacts, writeResults } from "./results.mjs";
import { ServerPool, runOne } from "./runner.mjs";
import { cpuRows, targetRows, targetTable } from "./targets.mjs";
import { MIRROR_COMPARISONS } from "./servers.mjs";

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
/** Start, stop and fsync around each fio run, for the time estimate. */
const OVERHEAD_SECONDS = 2.4;
/** A kept server's first start: mostly the initial copy of the image. */
const KEPT_START_SECONDS = 15;
const DEBIAN_PACKAGE = {
  fio: "fio",
  nbdkit: "nbdkit",
  "qemu-nbd": "qemu-utils",
  "qemu-storage-daemon": "qemu-system-common",
};

/** Every problem at once, each with what to do about it. */
function checkTools(servers) {
  const problems = [];
  const tools = new Set(["fio", ...servers.flatMap((s) => s.tools)]);
  for (const tool of tools)
    if (runSync(tool, ["--version"]) === undefined)
      problems.push(`${tool} not found on PATH: apt-get install ${DEBIAN_PACKAGE[tool] ?? tool}`);
  if (tools.has("fio") && problems.length === 0 && runSync("fio", ["--enghelp=nbd"]) === undefined)
    problems.push(
      "this fio has no nbd engine (ioengine=nbd): install Debian's fio 3.x built with libnbd",
    );
  for (const server of servers) {
    const problem = server.check?.({ repoRoot: REPO_ROOT });
    if (problem !== undefined) problems.push(`${server.name}: ${problem}`);
  }
  return problems;
}

/** Same size, same content, same allocation for every server; fsynced. */
function makeImage(path, size, prefill, chunk) {
  return prefill ? fillImage(path, size, chunk) : sparseImage(path, size);
}

let tmp;
let shuttingDown = false;
let pool;

async function shutdown(code, message) {
  if (shuttingDown) process.exit(code); // a second Ctrl-C: the exit handler kills
  shuttingDown = true;
  if (message !== undefined) console.error(message);
  if (pool !== undefined) pool.stopping = true;
  await stopAll(2000);
  if (tmp !== undefined) await rm(tmp, { recursive: true, force: true });
  process.exit(code);
}

async function main() {
  const opts = parseOptions(process.argv.slice(2), REPO_ROOT);
  if (opts.help) return void console.log(HELP);
  if (opts.list) {
    for (const s of opts.servers) console.log(`server    ${s.name.padEnd(18)} ${s.description}`);
    for (const w of opts.workloads) console.log(`workload  ${w.name.padEnd(18)} ${w.label}`);
    return;
  }
  const problems = checkTools(opts.servers);
  if (problems.length > 0) {
    console.error(`nbd-bench: cannot run:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    process.exitCode = 1;
    return;
  }

  process.on(
    "SIGINT",
    () => void shutdown(130, "\ninterrupted: stopping servers, removing images"),
  );
  process.on("SIGTERM", () => void shutdown(143));
  process.on("exit", () => {
    killAllSync();
    if (tmp !== undefined) rmSync(tmp, { recursive: true, force: true });
  });
  await mkdir(opts.tmpdir, { recursive: true });
  tmp = await mkdtemp(join(opts.tmpdir, "peercopy-bench-"));
  pool = new ServerPool(REPO_ROOT);
  try {
    await benchmark(opts, tmp);
  } finally {
    await pool.closeAll();
    await stopAll(2000);
    await rm(tmp, { recursive: true, force: true });
  }
}

async function benchmark(opts, tmp) {
  const started = Date.now();
  const machine = machineFacts(REPO_ROOT, tmp);

  // Workload by workload, each repetition runs every server back to back, starting
  // each repetition with the next server so no server always goes first: the noise
  // of a shared machine falls on all servers alike. Workload-major so that a kept
  // server (a mirror) serves the runs of one workload in a row and is restarted when
  // the workload changes: its peak RSS is never one left over from another workload.
  // Mirror servers run only the mirror workloads.
  const plan = [];
  const runsOn = (server, workload) =>
    server.mirror !== true || opts.mirrorWorkloads.includes(workload.name);
  for (const workload of opts.workloads)
    for (let rep = 0; rep < opts.runs; rep++)
      for (let i = 0; i < opts.servers.length; i++) {
        const server = opts.servers[(i + rep) % opts.servers.length];
        if (runsOn(server, workload)) plan.push({ rep, workload, server });
      }
  if (plan.length === 0)
    throw new UsageError(
      "nothing to run: the mirror servers run only --mirror-workloads, and none of those is in --workloads",
    );
  const images = new Map();
  const chunk = randomBytes(2 ** 20);
  const planned = opts.servers.filter((s) => plan.some((p) => p.server === s));
  const count = planned.reduce((n, s) => n + s.images.length, 0);
  process.stderr.write(
    `preparing ${count} image(s) of ${opts.sizeText}${opts.prefill ? ", pre-filled" : ""} in ${tmp} … `,
  );
  for (const server of planned) {
    const dir = join(tmp, server.name);
    await mkdir(dir);
    const paths = {};
    for (const name of server.images) {
      paths[name] = join(dir, `${name}.img`);
      await makeImage(paths[name], opts.size, opts.prefill, chunk);
    }
    images.set(server.name, { dir, paths });
  }
  process.stderr.write(`${fmt((Date.now() - started) / 1000, 1)} s\n`);

  const kept = new Set(
    plan.filter((p) => p.server.keep === true).map((p) => `${p.server.name} ${p.workload.name}`),
  );
  const estimate =
    (plan.length * (opts.runtime + opts.ramp + OVERHEAD_SECONDS) + kept.size * KEPT_START_SECONDS) /
    60;
  console.error(
    `${plan.length} fio runs of ${opts.ramp}+${opts.runtime} s, about ${fmt(estimate, 1)} min`,
  );

  const runs = [];
  const commands = new Map();
  for (const [i, step] of plan.entries()) {
    const record = await runOne(step, images.get(step.server.name), opts, pool, commands);
    if (shuttingDown) return;
    runs.push(record);
    console.error(progressLine(i, plan.length, step, record, opts.runs));
  }
  await pool.closeAll();

  const summary = summarize(runs, opts.workloads, opts.servers);
  const ratioList = ratios(summary, opts.workloads, opts.servers);
  const comparisonList = comparisons(summary, opts.workloads, MIRROR_COMPARISONS);
  machine.loadAverageAtEnd = loadavg().map((v) => Math.round(v * 100) / 100);
  machine.loadAverageDuringRuns = loadSummary(runs);
  const rows = tableRows(summary, ratioList, opts.workloads);
  console.log(`\n${textTable(rows)}\n\n${ratioLegend(ratioList)}`);
  const mirrors = mirrorRows(summary, opts.workloads);
  if (mirrors.length > 1) console.log(`\nmirrors:\n${textTable(mirrors)}`);
  if (comparisonList.length > 0)
    console.log(`\n${textTable(comparisonRows(comparisonList, opts.workloads))}`);
  const targets = targetRows(summary, runs, opts);
  console.log(`\ntargets:\n${textTable(targetTable(targets, opts.workloads))}`);
  const cpu = cpuRows(summary, opts.workloads, opts);
  if (cpu.length > 1) console.log(`\nCPU per request:\n${textTable(cpu)}`);

  const data = {
    schema: 1,
    date: new Date(started).toISOString(),
    wallSeconds: (Date.now() - started) / 1000,
    machine,
    config: {
      runs: opts.runs,
      runtime: opts.runtime,
      ramp: opts.ramp,
      size: opts.size,
      sizeText: opts.sizeText,
      prefill: opts.prefill,
      mirrorWorkloads: opts.mirrorWorkloads,
      order: "workload by workload; within each repetition every server in turn, rotated",
    },
    servers: opts.servers.map((s) => ({
      name: s.name,
      group: s.group,
      role: s.role,
      kept: s.keep === true,
      description: s.description,
      commands: commands.get(s.name) ?? [],
    })),
    workloads: opts.workloads,
    summary,
    ratios: ratioList,
    comparisons: comparisonList,
    targets,
    runs,
  };
  const written = await writeResults(opts.out, data);
  console.log(`\nwritten: ${written.map((p) => p.replace(`${REPO_ROOT}/`, "")).join(", ")}`);
  const failed = runs.filter((r) => r.error !== undefined).length;
  if (failed > 0) {
    console.error(`${failed} of ${runs.length} runs failed (their errors are in latest.json)`);
    process.exitCode = 1;
  }
}

function progressLine(i, total, { rep, workload, server }, record, reps) {
  const head = `[${String(i + 1).padStart(String(total).length)}/${total}] rep ${rep + 1}/${reps}  ${workload.label.padEnd(22)} ${server.name.padEnd(21)}`;
  if (record.error !== undefined) return `${head} FAILED: ${record.error}`;
  const rss = Object.entries(record.rssMiBByProcess ?? {})
    .map(([label, mib]) => `${label} ${fmt(mib, 0)}`)
    .join(" / ");
  const copy =
    record.initialCopySeconds === undefined
      ? ""
      : `  initial copy ${fmt(record.initialCopySeconds, 1)} s`;
  const lag =
    record.mirror === undefined
      ? ""
      : `  lag at end ${fmt(record.mirror.lagBytes / 2 ** 20, 1)} MiB, drained in ${fmt(record.mirror.drainSeconds, 1)} s`;
  return (
    `${head} ${fmt(record.iops, 0).padStart(8)} IOPS ${fmt(record.mibps, 1).padStart(7)} MiB/s` +
    `  p99 ${fmt(record.p99Us, 0).padStart(6)} µs  RSS ${rss} MiB  load ${record.loadAverage1m}${copy}${lag}`
  );
}

main().catch((err) => {
  if (err instanceof UsageError || err?.code?.startsWith?.("ERR_PARSE_ARGS")) {
    console.error(`nbd-bench: ${err.message}\n\n${HELP}`);
    void shutdown(2);
  } else {
    console.error(`nbd-bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    void shutdown(1);
  }
});
