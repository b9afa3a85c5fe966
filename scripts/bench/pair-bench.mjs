// The pair's own costs, each measured side by side in one run:
//  1. resync: a peercopy primary copying its marked tracks to a peercopy
//     secondary, against nbdcopy copying the same tracks between the same two
//     servers (the primary's host export to the secondary's replication export);
//  2. metadata: 4k random write QD32 through a sync mirror with the persistent
//     metadata (activity log, bitmap) on, against the same with --metadata none.
// The marked set is the whole volume (a first copy to a fresh secondary), the
// one set nbdcopy can copy as well. Runs alternate their order; medians.
//
//   node scripts/bench/pair-bench.mjs [--runs 5] [--size 1G] [--runtime 5] [--out DIR]
//                                     [--only resync,metadata]
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { peercopyArgs } from "./peercopy-cli.mjs";
import { loadavg, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { runFio, WORKLOADS } from "./fio.mjs";
import { fillImage, sizeOf, sparseImage } from "./images.mjs";
import { freePort, spawnTracked, stopAll } from "./proc.mjs";
import { median, markdownTable, textTable, fmt, fmtRatio } from "./report.mjs";
import { machineFacts } from "./results.mjs";

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const MAIN = join(repoRoot, "dist", "src", "cli", "main.js");
const START_TIMEOUT_MS = 15_000;
const COPY_TIMEOUT_MS = 600_000;

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "5" },
    size: { type: "string", default: "1G" },
    runtime: { type: "string", default: "5" },
    out: { type: "string", default: join(repoRoot, "scripts", "bench", "results") },
    only: { type: "string", default: "resync,metadata" },
  },
});
const runs = Number(values.runs);
const size = sizeOf(values.size);
const runtime = Number(values.runtime);
const only = new Set(values.only.split(","));
if (!(runs >= 1) || !(runtime >= 1) || !(size >= 1 << 20)) {
  process.stderr.write("usage: pair-bench.mjs [--runs N>=1] [--size SIZE>=1M] [--runtime S>=1]\n");
  process.exit(2);
}

async function startSecondary(image) {
  const port = await freePort();
  const proc = spawnTracked(
    process.execPath,
    peercopyArgs(MAIN, ["secondary", image, "--listen", `127.0.0.1:${port}`]),
    { name: "peercopy secondary" },
  );
  await proc.waitForLine((l) => l.includes('"msg":"listening"'), START_TIMEOUT_MS);
  return { proc, replication: `nbd://127.0.0.1:${port}/replication` };
}

async function startPrimary(image, remote, extra = []) {
  const [port, admin] = [await freePort(), await freePort()];
  const proc = spawnTracked(
    process.execPath,
    peercopyArgs(MAIN, [
      "primary",
      image,
      "--listen",
      `127.0.0.1:${port}`,
      "--remote",
      remote,
    ]).concat(["--admin", `127.0.0.1:${admin}`, "--mode", "sync"], extra),
    { name: "peercopy primary" },
  );
  await proc.waitForLine((l) => l.includes('"msg":"admin API"'), START_TIMEOUT_MS);
  return { proc, uri: `nbd://127.0.0.1:${port}/`, status: `http://127.0.0.1:${admin}/status` };
}

function record(line) {
  try {
    return JSON.parse(line);
  } catch {
    return {};
  }
}

/** A log record with `msg` among the last lines the process wrote (the log is on stderr). */
function logRecord(proc, msg) {
  for (const line of proc.tail().split("\n")) {
    const r = record(line.slice(line.indexOf("{")));
    if (r.msg === msg) return r;
  }
  throw new Error(`no "${msg}" in the log of ${proc.name}\n${proc.tail()}`);
}

/** Seconds from "resync started" to "resync finished", as the primary logged them. */
async function resyncSeconds(primary) {
  await waitInSync(primary.status);
  const started = logRecord(primary.proc, "resync started");
  const finished = logRecord(primary.proc, "resync finished");
  if (finished.complete !== true) throw new Error("the resync did not complete");
  return { seconds: (finished.time - started.time) / 1000, tracks: finished.copiedTracks };
}

async function resyncRun(dir, pImage) {
  const sImage = join(dir, "s.img");
  await sparseImage(sImage, size, { metadata: true });
  await rm(`${pImage}.pcmeta`, { force: true });
  const s = await startSecondary(sImage);
  const p = await startPrimary(pImage, s.replication);
  try {
    const r = await resyncSeconds(p);
    return { mibps: size / 2 ** 20 / r.seconds, seconds: r.seconds, tracks: r.tracks };
  } finally {
    await p.proc.stop();
    await s.proc.stop();
  }
}

async function nbdcopyRun(dir, pImage) {
  const sImage = join(dir, "s.img");
  await sparseImage(sImage, size, { metadata: true });
  const s = await startSecondary(sImage);
  // The same primary process serves the source; its own link points nowhere.
  const nowhere = `nbd://127.0.0.1:${await freePort()}/replication`;
  const p = await startPrimary(pImage, nowhere, ["--metadata", "none"]);
  try {
    const began = performance.now();
    const copy = spawnTracked("nbdcopy", [p.uri, s.replication], { name: "nbdcopy" });
    const { code } = await copy.exited;
    if (code !== 0) throw new Error(`nbdcopy exited with ${code}\n${copy.tail()}`);
    const seconds = (performance.now() - began) / 1000;
    return { mibps: size / 2 ** 20 / seconds, seconds };
  } finally {
    await p.proc.stop();
    await s.proc.stop();
  }
}

async function waitInSync(statusUrl) {
  const deadline = Date.now() + COPY_TIMEOUT_MS;
  for (;;) {
    const s = await (await fetch(statusUrl)).json();
    if (s.pairState === "full-duplex" && s.lag?.bytes === 0) return;
    if (Date.now() > deadline) throw new Error(`no full duplex: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Two sync pairs, metadata on and off, kept for all runs; fio alternates between them. */
async function metadataRuns(dir) {
  const workload = WORKLOADS.find((w) => w.name === "randwrite-4k-qd32");
  const pairs = [];
  for (const [name, extra] of [
    ["metadata", []],
    ["none", ["--metadata", "none"]],
  ]) {
    const image = join(dir, `m-${name}.img`);
    await rm(`${image}.pcmeta`, { force: true });
    await fillImage(image, size);
    const sImage = join(dir, `m-${name}-s.img`);
    await sparseImage(sImage, size, { metadata: true });
    const s = await startSecondary(sImage);
    const p = await startPrimary(image, s.replication, extra);
    await waitInSync(p.status);
    pairs.push({ name, p, s });
  }
  const results = { metadata: [], none: [] };
  try {
    for (let rep = 0; rep < runs; rep++) {
      const order = rep % 2 === 0 ? pairs : [...pairs].reverse();
      for (const pair of order) {
        await waitInSync(pair.p.status);
        const r = await runFio(workload, pair.p.uri, { size, runtime, ramp: 1 });
        results[pair.name].push(r.iops);
        process.stdout.write(`  metadata ${pair.name}: ${fmt(r.iops, 0)} IOPS\n`);
      }
    }
  } finally {
    for (const { p, s } of pairs) {
      await p.proc.stop();
      await s.proc.stop();
    }
  }
  return results;
}

async function main() {
  const dir = await mkdtemp(join(tmpdir(), "peercopy-pair-bench-"));
  const cleanup = async () => {
    await stopAll();
    await rm(dir, { recursive: true, force: true });
  };
  process.once("SIGINT", () => void cleanup().then(() => process.exit(130)));
  const loadBefore = loadavg()[0];
  try {
    const pImage = join(dir, "p.img");
    await fillImage(pImage, size);
    const copies = { resync: [], nbdcopy: [] };
    for (let rep = 0; rep < runs && only.has("resync"); rep++) {
      const order = rep % 2 === 0 ? ["resync", "nbdcopy"] : ["nbdcopy", "resync"];
      for (const which of order) {
        const r = which === "resync" ? await resyncRun(dir, pImage) : await nbdcopyRun(dir, pImage);
        copies[which].push(r.mibps);
        process.stdout.write(`  ${which}: ${fmt(r.mibps, 0)} MiB/s (${fmt(r.seconds, 2)} s)\n`);
      }
    }
    const meta = only.has("metadata") ? await metadataRuns(dir) : { metadata: [], none: [] };
    const resync = median(copies.resync);
    const nbdcopy = median(copies.nbdcopy);
    const on = median(meta.metadata);
    const off = median(meta.none);
    const rows = [
      ["measure", "peercopy", "against", "ratio", "target", "met?"],
      [
        `resync of ${values.size} (MiB/s)`,
        fmt(resync, 0),
        `nbdcopy ${fmt(nbdcopy, 0)}`,
        fmtRatio(resync / nbdcopy),
        "≥ 0.80×",
        resync / nbdcopy >= 0.8 ? "yes" : "no",
      ],
      [
        "4k randwrite QD32, sync, metadata on (IOPS)",
        fmt(on, 0),
        `--metadata none ${fmt(off, 0)}`,
        fmtRatio(on / off),
        "≥ 0.90×",
        on / off >= 0.9 ? "yes" : "no",
      ],
    ];
    process.stdout.write(`\n${textTable(rows)}\n`);
    await mkdir(values.out, { recursive: true });
    const facts = machineFacts(repoRoot, dir);
    await writeFile(
      join(values.out, "pair.json"),
      `${JSON.stringify({ facts, runs, size, runtime, copies, metadata: meta }, null, 2)}\n`,
    );
    await writeFile(
      join(values.out, "pair.md"),
      `# Pair benchmark\n\n${runs} runs each, medians; ${values.size} volume; ` +
        `fio runs of ${runtime} s; load average ${fmt(loadBefore, 1)} before and ` +
        `${fmt(loadavg()[0], 1)} after. Produced by \`node scripts/bench/pair-bench.mjs\`.\n\n` +
        `${markdownTable(rows)}\n\nEvery run:\n\n` +
        `- resync MiB/s: ${copies.resync.map((x) => fmt(x, 0)).join(", ")}\n` +
        `- nbdcopy MiB/s: ${copies.nbdcopy.map((x) => fmt(x, 0)).join(", ")}\n` +
        `- metadata on IOPS: ${meta.metadata.map((x) => fmt(x, 0)).join(", ")}\n` +
        `- --metadata none IOPS: ${meta.none.map((x) => fmt(x, 0)).join(", ")}\n`,
    );
  } finally {
    await cleanup();
  }
}

await main();
