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
import { mkdir, mkdtemp, open, rm } from "node:fs/promises";
import { loadavg } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { runFio } from "./fio.mjs";
import { HELP, UsageError, parseOptions } from "./options.mjs";
import {
  cpuSeconds,
  freePort,
  killAllSync,
  peakRss,
  runSync,
  spawnTracked,
  stopAll,
} from "./proc.mjs";
import { fmt, ratioLegend, ratios, summarize, tableRows, textTable } from "./report.mjs";
import { machineFacts, writeResults } from "./results.mjs";

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const START_ATTEMPTS = 3;
/** Start, stop and fsync around each fio run, for the time estimate. */
const OVERHEAD_SECONDS = 1.5;
const DEBIAN_PACKAGE = { fio: "fio", nbdkit: "nbdkit", "qemu-nbd": "qemu-utils" };

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
async function makeImage(path, size, prefill, chunk) {
  const fh = await open(path, "w");
  try {
    await fh.truncate(size);
    if (prefill)
      for (let offset = 0; offset < size; offset += chunk.length)
        await fh.write(chunk, 0, Math.min(chunk.length, size - offset), offset);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function syncFile(path) {
  const fh = await open(path, "r+");
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

let tmp;
let shuttingDown = false;

async function shutdown(code, message) {
  if (shuttingDown) process.exit(code); // a second Ctrl-C: the exit handler kills
  shuttingDown = true;
  if (message !== undefined) console.error(message);
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
  try {
    await benchmark(opts, tmp);
  } finally {
    await stopAll(2000);
    await rm(tmp, { recursive: true, force: true });
  }
}

async function benchmark(opts, tmp) {
  const started = Date.now();
  const machine = machineFacts(REPO_ROOT, tmp);

  const images = new Map();
  const chunk = randomBytes(2 ** 20);
  const count = opts.servers.reduce((n, s) => n + s.images.length, 0);
  process.stderr.write(
    `preparing ${count} image(s) of ${opts.sizeText}${opts.prefill ? ", pre-filled" : ""} in ${tmp} … `,
  );
  for (const server of opts.servers) {
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

  // Round-robin: each repetition runs every workload on every server back to back,
  // starting each repetition with the next server so no server always goes first.
  const plan = [];
  for (let rep = 0; rep < opts.runs; rep++)
    for (const workload of opts.workloads)
      for (let i = 0; i < opts.servers.length; i++)
        plan.push({ rep, workload, server: opts.servers[(i + rep) % opts.servers.length] });
  const estimate = (plan.length * (opts.runtime + opts.ramp + OVERHEAD_SECONDS)) / 60;
  console.error(
    `${plan.length} fio runs of ${opts.ramp}+${opts.runtime} s, about ${fmt(estimate, 1)} min`,
  );

  const runs = [];
  const commands = new Map();
  for (const [i, step] of plan.entries()) {
    const record = await runOne(step, images.get(step.server.name), opts, commands);
    if (shuttingDown) return;
    runs.push(record);
    console.error(progressLine(i, plan.length, step, record, opts.runs));
  }

  const summary = summarize(runs, opts.workloads, opts.servers);
  const ratioList = ratios(summary, opts.workloads, opts.servers);
  machine.loadAverageAtEnd = loadavg().map((v) => Math.round(v * 100) / 100);
  const rows = tableRows(summary, ratioList, opts.workloads);
  console.log(`\n${textTable(rows)}\n\n${ratioLegend(ratioList)}`);

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
      order: "round-robin per repetition, rotated",
    },
    servers: opts.servers.map((s) => ({
      name: s.name,
      group: s.group,
      role: s.role,
      description: s.description,
      commands: commands.get(s.name) ?? [],
    })),
    workloads: opts.workloads,
    summary,
    ratios: ratioList,
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

/** One fio run on a freshly started server; errors are recorded, not thrown. */
async function runOne({ rep, workload, server }, image, opts, commands) {
  const record = { rep, workload: workload.name, server: server.name };
  let spawned = [];
  const env = {
    images: image.paths,
    workDir: image.dir,
    repoRoot: REPO_ROOT,
    freePort,
    spawn: (cmd, args, options) => {
      const proc = spawnTracked(cmd, args, options);
      spawned.push(proc);
      return proc;
    },
  };
  let running;
  try {
    for (let attempt = 1; running === undefined; attempt++) {
      try {
        running = await server.start(env);
      } catch (err) {
        // Most often the port was taken between picking it and binding it.
        await Promise.all(spawned.map((p) => p.stop(2000)));
        spawned = [];
        if (attempt >= START_ATTEMPTS || shuttingDown) throw err;
      }
    }
    commands.set(server.name, running.commands);
    const fio = await runFio(workload, running.uri, opts);
    const rss = await Promise.all(running.pids.map(peakRss));
    const cpu = await Promise.all(running.pids.map(cpuSeconds));
    Object.assign(record, fio, {
      rssMiB: rss.reduce((a, b) => a + b, 0) / 2 ** 20,
      rssMiBByPid: rss.map((b) => b / 2 ** 20),
      cpuSeconds: cpu.reduce((a, b) => a + b, 0),
    });
  } catch (err) {
    record.error = err instanceof Error ? err.message : String(err);
  } finally {
    if (running !== undefined) await running.stop().catch(() => undefined);
    await Promise.all(spawned.map((p) => p.stop(5000)));
    // Write back this server's dirty pages now, not during the next server's run.
    const began = Date.now();
    for (const path of Object.values(image.paths)) await syncFile(path).catch(() => undefined);
    record.syncMs = Date.now() - began;
  }
  return record;
}

function progressLine(i, total, { rep, workload, server }, record, reps) {
  const head = `[${String(i + 1).padStart(String(total).length)}/${total}] rep ${rep + 1}/${reps}  ${workload.label.padEnd(22)} ${server.name.padEnd(10)}`;
  if (record.error !== undefined) return `${head} FAILED: ${record.error}`;
  return (
    `${head} ${fmt(record.iops, 0).padStart(8)} IOPS ${fmt(record.mibps, 1).padStart(7)} MiB/s` +
    `  p99 ${fmt(record.p99Us, 0).padStart(6)} µs  RSS ${fmt(record.rssMiB, 1)} MiB`
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
