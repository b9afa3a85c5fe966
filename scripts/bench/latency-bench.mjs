// Distance in the loop: 4k random writes at QD1 and QD32 through a sync and an
// async pair (peercopy primary → peercopy secondary on loopback) while the link
// emulator adds 0, 1, 5 and 20 ms of one-way latency. Both pairs are started
// once and kept; the latency is changed at run time (POST /link/set), and every
// repetition visits the latencies in a rotated order. Medians of the runs.
//
// Checked, and written beside the figures:
//  - sync QD1: the p50 latency rises by the added round trip (2 × one-way), within 15 %,
//    over the p50 at 0 ms with fio waiting as long between writes (see idleBaseline);
//  - async: IOPS within noise of 0 ms while the link keeps up; once the lag
//    reaches its bound (--max-lag), the block policy holds it there (never over
//    the bound, at it most of the time).
//
//   node scripts/bench/latency-bench.mjs [--runs 3] [--runtime 3] [--latencies 0,1,5,20]
//       [--max-lag 16M] [--size 256M] [--out DIR]
import { readFileSync } from "node:fs";
import { peercopyArgs } from "./peercopy-cli.mjs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { runFio, WORKLOADS } from "./fio.mjs";
import { fillImage, sizeOf } from "./images.mjs";
import { freePort, spawnTracked, stopAll } from "./proc.mjs";
import { fmt, fmtRatio, markdownTable, median, textTable } from "./report.mjs";
import { machineFacts } from "./results.mjs";
import { latencyChart } from "./latency-chart.mjs";

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const MAIN = join(repoRoot, "dist", "src", "cli", "main.js");
const START_TIMEOUT_MS = 15_000;
const SYNC_TIMEOUT_MS = 300_000;
const LAG_SAMPLE_MS = 100;
/** The rise of sync QD1 p50 may differ from the added round trip by this much. */
const ROUND_TRIP_TOLERANCE = 0.15;
/** Noise when the 0 ms runs agree better than this. */
const MIN_NOISE = 0.1;
/** The lag counts as at its bound from this fraction of it. */
const AT_BOUND = 0.9;

const USAGE =
  "usage: latency-bench.mjs [--runs N>=1] [--runtime S>=1] [--latencies MS,...] [--max-lag SIZE] [--size SIZE>=16M] [--out DIR] [--from latency.json]\n";
let values;
try {
  ({ values } = parseArgs({
    options: {
      runs: { type: "string", default: "3" },
      runtime: { type: "string", default: "3" },
      latencies: { type: "string", default: "0,1,5,20" },
      "max-lag": { type: "string", default: "16M" },
      size: { type: "string", default: "256M" },
      out: { type: "string", default: join(repoRoot, "scripts", "bench", "results") },
      from: { type: "string" },
    },
  }));
} catch (err) {
  process.stderr.write(`${err.message}\n${USAGE}`);
  process.exit(2);
}
// --from FILE: no measuring, only the table, the checks and the chart again from a latency.json.
const earlier =
  values.from === undefined ? undefined : JSON.parse(readFileSync(values.from, "utf8"));
const sizeText = earlier?.sizeText ?? values.size;
const maxLagText = earlier?.maxLagText ?? values["max-lag"];
const runs = earlier?.runs ?? Number(values.runs);
const runtime = earlier?.runtime ?? Number(values.runtime);
const size = sizeOf(sizeText);
const maxLag = sizeOf(maxLagText);
const latencies = earlier?.latencies ?? values.latencies.split(",").map(Number);
if (
  !(runs >= 1) ||
  !(runtime >= 1) ||
  !(size >= 16 << 20) ||
  !(maxLag >= 1 << 20) ||
  latencies.some((l) => !(l >= 0 && l <= 1000)) ||
  latencies[0] !== 0
) {
  process.stderr.write(`${USAGE}  (--latencies starts with 0: the baseline)\n`);
  process.exit(2);
}
const MODES = ["sync", "async"];
/** p50 of the total latency, submission to completion: with fio's nbd engine the
 * completion latency alone leaves out time a write waits when fio sleeps between writes. */
const LAT = ["--lat_percentiles=1"];
const QD = [
  WORKLOADS.find((w) => w.name === "randwrite-4k-qd1"),
  WORKLOADS.find((w) => w.name === "randwrite-4k-qd32"),
];

async function startPair(dir, mode) {
  const sImage = join(dir, `${mode}-s.img`);
  const pImage = join(dir, `${mode}-p.img`);
  await fillImage(pImage, size);
  const sPort = await freePort();
  const secondary = spawnTracked(
    process.execPath,
    peercopyArgs(MAIN, [
      "secondary",
      sImage,
      "--size",
      String(size),
      "--listen",
      `127.0.0.1:${sPort}`,
    ]),
    { name: `${mode} secondary` },
  );
  await secondary.waitForLine((l) => l.includes('"msg":"listening"'), START_TIMEOUT_MS);
  const [port, admin] = [await freePort(), await freePort()];
  const lagArgs = mode === "async" ? ["--max-lag", String(maxLag), "--on-lag", "block"] : [];
  const primary = spawnTracked(
    process.execPath,
    peercopyArgs(MAIN, ["primary", pImage, "--listen", `127.0.0.1:${port}`, "--mode", mode]).concat(
      ["--remote", `nbd://127.0.0.1:${sPort}/replication`, "--admin", `127.0.0.1:${admin}`],
      ["--link-emulation", "--log-level", "warn"],
      lagArgs,
    ),
    { name: `${mode} primary` },
  );
  const base = `http://127.0.0.1:${admin}`;
  const pair = { mode, primary, secondary, uri: `nbd://127.0.0.1:${port}/`, base };
  await waitInSync(pair);
  return pair;
}

async function status(pair) {
  const res = await fetch(`${pair.base}/status`);
  return res.json();
}

/** Full duplex with nothing behind: the next run starts from the same place. */
async function waitInSync(pair) {
  const deadline = Date.now() + SYNC_TIMEOUT_MS;
  for (;;) {
    if (!pair.primary.running())
      throw new Error(`${pair.primary.name} exited\n${pair.primary.tail()}`);
    try {
      const s = await status(pair);
      if (s.pairState === "full-duplex" && s.lag.bytes === 0 && s.link.queued === 0) return;
      if (Date.now() > deadline) throw new Error(`no full duplex: ${JSON.stringify(s)}`);
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function setLatency(pair, ms) {
  const res = await fetch(`${pair.base}/link/set`, {
    method: "POST",
    body: JSON.stringify({ latency: `${ms}ms` }),
  });
  if (!res.ok) throw new Error(`POST /link/set: ${res.status} ${await res.text()}`);
}

/** Samples the async pair's lag (bytes) while fio runs. */
function sampleLag(pair) {
  const samples = [];
  let stop = false;
  const done = (async () => {
    while (!stop) {
      try {
        samples.push((await status(pair)).lag.bytes);
      } catch {
        // the primary is busy answering fio; the next sample will do
      }
      await new Promise((r) => setTimeout(r, LAG_SAMPLE_MS));
    }
  })();
  return {
    async end() {
      stop = true;
      await done;
      return samples;
    },
  };
}

/**
 * What the lag did in one run: its peak, the share of samples at the bound, and
 * its median from the first time it reached the bound on.
 */
function lagFigures(samples) {
  const peak = Math.max(0, ...samples);
  const first = samples.findIndex((b) => b >= AT_BOUND * maxLag);
  const share = samples.filter((b) => b >= AT_BOUND * maxLag).length / samples.length;
  return { peak, share, atBound: first < 0 ? null : median(samples.slice(first)) };
}

/**
 * The control for the sync QD1 rise: 0 ms added, but fio waits the round trip of
 * `latency` between writes, so that the pair is idle between requests as it is
 * behind a long link. On a virtual machine a process woken after a millisecond
 * or more of idleness answers later than one kept busy (here an NBD round trip
 * to an idle server costs 0.2-0.4 ms against 0.07 ms back to back, nbdkit's
 * alike); behind the emulated link each hop pays that too. Rising by the round
 * trip over this baseline is what the link emulator itself is answerable for.
 */
async function idleBaseline(pair, rep, latency) {
  await waitInSync(pair);
  const workload = QD[0];
  const think = [...LAT, "--thinktime", String(2 * latency * 1000), "--thinktime_blocks=1"];
  const r = await runFio(workload, pair.uri, { size, runtime, ramp: 1, extra: think });
  process.stdout.write(
    `  0 ms sync QD1, ${2 * latency} ms between writes: p50 ${fmt(r.latP50Us, 0)} µs\n`,
  );
  return {
    rep,
    latency: 0,
    idle: latency,
    mode: "sync-idle",
    qd: 1,
    iops: r.iops,
    p50Us: r.latP50Us,
  };
}

async function measure(pairs) {
  const results = [];
  for (let rep = 0; rep < runs; rep++) {
    const order = latencies.map((_, i) => latencies[(i + rep) % latencies.length]);
    for (const latency of order) {
      for (const pair of pairs) {
        await setLatency(pair, latency);
        for (const workload of QD) {
          await waitInSync(pair);
          const lag = pair.mode === "async" ? sampleLag(pair) : undefined;
          const r = await runFio(workload, pair.uri, { size, runtime, ramp: 1, extra: LAT });
          const samples = lag === undefined ? [] : await lag.end();
          const row = {
            rep,
            latency,
            mode: pair.mode,
            qd: workload.iodepth,
            iops: r.iops,
            p50Us: r.latP50Us,
            p99Us: r.p99Us,
            ...(lag === undefined ? {} : { lag: lagFigures(samples), lagSamples: samples.length }),
          };
          results.push(row);
          const lagText =
            row.lag === undefined ? "" : `, lag peak ${fmt(row.lag.peak / 2 ** 20, 1)} MiB`;
          process.stdout.write(
            `  ${latency} ms ${pair.mode} QD${row.qd}: ${fmt(r.iops, 0)} IOPS, p50 ${fmt(row.p50Us, 0)} µs${lagText}\n`,
          );
        }
        if (pair.mode === "sync" && latency === 0)
          for (const idle of latencies.slice(1)) results.push(await idleBaseline(pair, rep, idle));
      }
    }
  }
  for (const pair of pairs) await setLatency(pair, 0);
  return results;
}

function cell(results, mode, qd, latency) {
  const mine = results.filter((r) => r.mode === mode && r.qd === qd && r.latency === latency);
  const iops = mine.map((r) => r.iops);
  const lags = mine.map((r) => r.lag).filter((l) => l !== undefined);
  // A run where the lag sat at its bound most of the time: the link, not the host, set the pace.
  const boundRuns = lags.filter((l) => l.share >= 0.5);
  const mid = median(iops);
  return {
    iops: mid,
    // Median absolute deviation, relative: ×1.4826 is one σ of a normal distribution.
    sigma: (1.4826 * median(iops.map((x) => Math.abs(x - mid)))) / mid,
    p50Us: median(mine.map((r) => r.p50Us)),
    p99Us: median(mine.map((r) => r.p99Us)),
    lagPeak: lags.length === 0 ? NaN : Math.max(...lags.map((l) => l.peak)),
    bounded: boundRuns.length * 2 > lags.length,
    lagHeld: median(boundRuns.map((l) => l.atBound)),
    lagShare: median(lags.map((l) => l.share)),
  };
}

/**
 * `f(run at latency, run at 0 ms)` for each repetition, then the median: a run is
 * compared with the baseline of its own repetition, measured minutes apart at most.
 */
function paired(results, mode, qd, latency, f) {
  const of = (rep, l) =>
    results.find((r) => r.mode === mode && r.qd === qd && r.latency === l && r.rep === rep);
  const values = [];
  for (let rep = 0; rep < runs; rep++) {
    const [at, zero] = [of(rep, latency), of(rep, 0)];
    if (at !== undefined && zero !== undefined) values.push(f(at, zero));
  }
  return median(values);
}

/** The sync QD1 p50 at `latency` over the idle baseline of its repetition. */
function idleRise(results, latency) {
  const values = [];
  const bases = [];
  for (let rep = 0; rep < runs; rep++) {
    const at = results.find(
      (r) => r.mode === "sync" && r.qd === 1 && r.latency === latency && r.rep === rep,
    );
    const base = results.find((r) => r.mode === "sync-idle" && r.idle === latency && r.rep === rep);
    if (at === undefined || base === undefined) continue;
    values.push(at.p50Us - base.p50Us);
    bases.push(base.p50Us);
  }
  return { rise: median(values), baseUs: median(bases) };
}

/** The table, the checks and the figures the chart needs. */
function analyse(results) {
  const rows = [
    [
      "one-way latency",
      "added round trip",
      "sync QD1 p50",
      "rise",
      "idle 0 ms p50",
      "rise over idle",
      "÷ round trip",
      "sync QD1 IOPS",
      "sync QD32 IOPS",
      "async QD1 IOPS",
      "async QD32 IOPS",
      "async lag (QD1 / QD32)",
    ],
  ];
  const checks = [];
  const base = {
    sync1: cell(results, "sync", 1, 0),
    async1: cell(results, "async", 1, 0),
    async32: cell(results, "async", 32, 0),
  };
  const series = [];
  for (const latency of latencies) {
    const s1 = cell(results, "sync", 1, latency);
    const s32 = cell(results, "sync", 32, latency);
    const a1 = cell(results, "async", 1, latency);
    const a32 = cell(results, "async", 32, latency);
    const roundTripUs = 2 * latency * 1000;
    const rise = paired(results, "sync", 1, latency, (a, z) => a.p50Us - z.p50Us);
    const idle = idleRise(results, latency);
    const ratio = latency === 0 ? NaN : idle.rise / roundTripUs;
    if (latency > 0)
      checks.push({
        what: `sync QD1 p50 at ${latency} ms rises by the ${2 * latency} ms round trip (±15 %) over 0 ms with as long between writes`,
        measured: `+${fmt(idle.rise / 1000, 2)} ms (${fmtRatio(ratio)}×); over 0 ms back to back +${fmt(rise / 1000, 2)} ms (${fmtRatio(rise / roundTripUs)}×)`,
        ok: Math.abs(ratio - 1) <= ROUND_TRIP_TOLERANCE,
      });
    const lagText = (c) =>
      c.bounded
        ? `held at ${fmt(c.lagHeld / 2 ** 20, 1)} MiB`
        : `peak ${fmt(c.lagPeak / 2 ** 20, 1)} MiB`;
    const gain = (qd) => paired(results, "async", qd, latency, (a, z) => a.iops / z.iops);
    for (const [qd, c, b] of [
      [1, a1, base.async1],
      [32, a32, base.async32],
    ]) {
      if (latency === 0) continue;
      if (c.bounded) {
        checks.push({
          what: `async QD${qd} at ${latency} ms: the lag reached its bound; block holds it there`,
          measured: `peak ${fmt(c.lagPeak / 2 ** 20, 2)} MiB, median at the bound ${fmt(c.lagHeld / 2 ** 20, 2)} MiB of ${fmt(maxLag / 2 ** 20, 0)} MiB`,
          ok: c.lagPeak <= maxLag && c.lagHeld >= AT_BOUND * maxLag,
        });
      } else {
        // Two σ of the 0 ms runs, and never less than MIN_NOISE.
        const noise = Math.max(MIN_NOISE, 2 * b.sigma);
        checks.push({
          what: `async QD${qd} at ${latency} ms: below the lag bound, IOPS within noise of 0 ms (±${fmt(noise * 100, 0)} %)`,
          measured: `${fmtRatio(gain(qd))}× of 0 ms`,
          ok: Math.abs(gain(qd) - 1) <= noise,
        });
      }
    }
    rows.push([
      `${latency} ms`,
      `${2 * latency} ms`,
      `${fmt(s1.p50Us / 1000, 2)} ms`,
      latency === 0 ? "–" : `+${fmt(rise / 1000, 2)} ms`,
      latency === 0 ? "–" : `${fmt(idle.baseUs / 1000, 2)} ms`,
      latency === 0 ? "–" : `+${fmt(idle.rise / 1000, 2)} ms`,
      latency === 0 ? "–" : fmtRatio(ratio),
      fmt(s1.iops, 0),
      fmt(s32.iops, 0),
      `${fmt(a1.iops, 0)} (${fmtRatio(gain(1))}×)`,
      `${fmt(a32.iops, 0)} (${fmtRatio(gain(32))}×)`,
      `${lagText(a1)} / ${lagText(a32)}`,
    ]);
    series.push({ latency, s1, s32, a1, a32, idleUs: idle.baseUs });
  }
  return { rows, checks, series };
}

async function main() {
  const dir = await mkdtemp(join(tmpdir(), "peercopy-latency-bench-"));
  const cleanup = async () => {
    await stopAll();
    await rm(dir, { recursive: true, force: true });
  };
  process.once("SIGINT", () => void cleanup().then(() => process.exit(130)));
  const began = performance.now();
  try {
    let facts = earlier?.facts;
    let results = earlier?.results;
    if (results === undefined) {
      facts = machineFacts(repoRoot, dir);
      const pairs = [];
      for (const mode of MODES) pairs.push(await startPair(dir, mode));
      results = await measure(pairs);
    }
    const minutes = earlier?.minutes ?? (performance.now() - began) / 60_000;
    await report({ facts, results, minutes });
  } finally {
    await cleanup();
  }
}

async function report({ facts, results, minutes }) {
  const { rows, checks, series } = analyse(results);
  const checkRows = [["check", "measured", "met?"]].concat(
    checks.map((c) => [c.what, c.measured, c.ok ? "yes" : "NO"]),
  );
  process.stdout.write(`\n${textTable(rows)}\n\n${textTable(checkRows)}\n`);
  await mkdir(values.out, { recursive: true });
  const setup =
    `${runs} runs per cell, medians; fio 4k random write (libnbd engine, one connection), ` +
    `${runtime} s measured after a 1 s ramp, over a ${sizeText} pre-filled volume; a peercopy ` +
    `primary and secondary on loopback, latency added by the primary's link emulator in each ` +
    `direction; async with --max-lag ${maxLagText} --on-lag block. ` +
    `${fmt(minutes, 1)} min; load average at the start ${facts.loadAverageAtStart.join(", ")} on ` +
    `${facts.nproc} CPUs (shared). Produced by \`node scripts/bench/latency-bench.mjs\`.`;
  const raw = { facts, runs, runtime, size, sizeText, maxLag, maxLagText, latencies, minutes };
  await writeFile(
    join(values.out, "latency.json"),
    `${JSON.stringify({ ...raw, results, checks }, null, 2)}\n`,
  );
  await writeFile(
    join(values.out, "latency.md"),
    `# Latency benchmark\n\n${setup}\n\n${markdownTable(rows)}\n\n` +
      `"rise" is the sync QD1 p50 minus its value at 0 ms; "idle 0 ms p50" is the sync QD1 p50 ` +
      `at 0 ms with fio waiting the round trip between writes (\`--thinktime\`), so that the pair ` +
      `idles between requests as it does behind the link, and "rise over idle" the p50 minus ` +
      `that; "(n×)" is IOPS ÷ the same mode and depth at 0 ms. Each is taken within a ` +
      `repetition, then the median over the repetitions. p50 is fio's total latency ` +
      `(submission to completion). The async lag is sampled every ${LAG_SAMPLE_MS} ms during ` +
      `each run; it is "held at" the bound when, in most runs, at least half the samples were ` +
      `within ${fmt(100 - AT_BOUND * 100, 0)} % of it (the figure is the median from the first ` +
      `such sample on), else its peak is shown.\n\n` +
      `${markdownTable(checkRows)}\n\n![chart](latency.svg)\n`,
  );
  await writeFile(
    join(values.out, "latency.svg"),
    latencyChart({
      series,
      maxLag,
      subtitle: `${runs} runs per point, medians; ${sizeText} volume`,
    }),
  );
  process.stdout.write(`\nwrote ${join(values.out, "latency.md")}, latency.json, latency.svg\n`);
  process.exitCode = checks.every((c) => c.ok) ? 0 : 1;
}

await main();
