// The speed targets peercopy is held to, checked against one run's medians: each
// row is a ratio of two servers measured in the same run (or a figure of one), the
// target, and whether it was met. Rows whose servers were not in the run say so.
import { WORKLOADS } from "./fio.mjs";
import { fmt } from "./report.mjs";

const SEQ_1M = "seqwrite-1m-qd8";
const RAND_4K = "randwrite-4k-qd32";
const RAND_4K_QD1 = "randwrite-4k-qd1";

/**
 * @typedef {object} TargetRow
 * @property {string} workload
 * @property {string} subject
 * @property {string} against
 * @property {number} value   the ratio (or MiB for RSS)
 * @property {string} shown   the value as printed
 * @property {string} target
 * @property {boolean | null} met  null: not measured in this run
 */

/** The speed targets, evaluated on a summary (and the raw runs, for "in every run"). */
export function targetRows(summary, runs, config) {
  const find = (workload, server) =>
    summary.find((r) => r.workload === workload && r.server === server && r.ok > 0);
  const rows = [];
  const ratio = (workload, subject, reference, key, atLeast, note = "") => {
    const a = find(workload, subject);
    const b = find(workload, reference);
    const value = a === undefined || b === undefined ? NaN : a[key] / b[key];
    rows.push(row(workload, subject, reference + note, value, `${fmt(value, 2)}×`, atLeast));
  };
  ratio(SEQ_1M, "peercopy", "nbdkit", "mibps", 0.95);
  ratio(RAND_4K_QD1, "peercopy", "nbdkit", "iops", 0.95);
  // With the same TLS (scripts/bench/tls-servers.mjs).
  ratio(RAND_4K, "peercopy-tls", "nbdkit-tls", "iops", 0.95);
  ratio(SEQ_1M, "peercopy-tls", "nbdkit-tls", "mibps", 0.95);
  ratio(RAND_4K, "peercopy-sync", "qsd-mirror-sync", "iops", 2);
  ratio(SEQ_1M, "peercopy-sync", "qsd-mirror-sync", "mibps", 2);
  // "≥ 2× in every run": the worst repetition, each run against the same repetition's.
  const worst = worstRepRatio(runs, SEQ_1M, "peercopy-sync", "qsd-mirror-sync", "mibps");
  rows.push(
    row(
      SEQ_1M,
      "peercopy-sync",
      "qsd-mirror-sync, worst repetition",
      worst,
      `${fmt(worst, 2)}×`,
      2,
    ),
  );
  ratio(RAND_4K, "peercopy-sync", "peercopy", "iops", 0.5);
  ratio(SEQ_1M, "peercopy-sync", "peercopy", "mibps", 0.5);
  ratio(RAND_4K, "peercopy-async", "peercopy", "iops", 0.8);
  ratio(SEQ_1M, "peercopy-async", "peercopy", "mibps", 0.8);
  for (const workload of [RAND_4K, SEQ_1M]) {
    const async = find(workload, "peercopy-async-nbdkit");
    const sync = find(workload, "peercopy-sync-nbdkit");
    const value =
      async === undefined || sync === undefined ? NaN : drainMiBps(async, config) / sync.mibps;
    rows.push(
      row(
        workload,
        "peercopy-async-nbdkit, drained",
        "peercopy-sync-nbdkit",
        value,
        `${fmt(value, 2)}×`,
        0.5,
      ),
    );
  }
  const primaries = summary
    .map((r) => ({ r, mib: r.rssMiBByProcess?.primary }))
    .filter((x) => Number.isFinite(x.mib));
  const peak = primaries.length === 0 ? NaN : Math.max(...primaries.map((x) => x.mib));
  const at = primaries.find((x) => x.mib === peak)?.r;
  rows.push({
    workload: at === undefined ? "any" : at.workload,
    subject: at === undefined ? "primary" : `${at.server} primary`,
    against: "peak RSS, any workload",
    value: peak,
    shown: `${fmt(peak, 0)} MiB`,
    target: "≤ 150 MiB",
    met: Number.isFinite(peak) ? peak <= 150 : null,
  });
  return rows;
}

function row(workload, subject, against, value, shown, atLeast) {
  return {
    workload,
    subject,
    against,
    value,
    shown: Number.isFinite(value) ? shown : "not run",
    target: `≥ ${atLeast}×`,
    met: Number.isFinite(value) ? value >= atLeast : null,
  };
}

/**
 * What reached the secondary per second during a run: what fio wrote (ramp
 * included) less what was still behind at the end, over the run's length.
 */
export function drainMiBps(summaryRow, config) {
  const seconds = config.runtime + config.ramp;
  const lag = summaryRow.mirror?.lagBytes ?? 0;
  return summaryRow.mibps - lag / 2 ** 20 / seconds;
}

function worstRepRatio(runs, workload, subject, reference, key) {
  const pick = (server, rep) =>
    runs.find((r) => r.workload === workload && r.server === server && r.rep === rep && !r.error)?.[
      key
    ];
  const values = [];
  for (const r of runs) {
    if (r.workload !== workload || r.server !== subject || r.error) continue;
    const other = pick(reference, r.rep);
    if (other !== undefined) values.push(r[key] / other);
  }
  return values.length === 0 ? NaN : Math.min(...values);
}

/** The targets as table rows (header first), with a met? column. */
export function targetTable(rows, workloads) {
  const out = [["workload", "subject", "against", "now", "target", "met?"]];
  for (const r of rows) {
    // A row whose workload was not in this run is still named by its label.
    const known = (w) => w.name === r.workload;
    const label = (workloads.find(known) ?? WORKLOADS.find(known))?.label ?? r.workload;
    out.push([
      label,
      r.subject,
      r.against,
      r.shown,
      r.target,
      r.met === null ? "–" : r.met ? "yes" : "no",
    ]);
  }
  return out;
}

/**
 * CPU time each process of a mirror spent per request, from /proc (utime + stime)
 * over the fio run, ramp included, so it is divided by the ramp's requests too.
 */
export function cpuRows(summary, workloads, config) {
  const out = [["workload", "server", "process", "CPU µs per request"]];
  for (const r of summary) {
    const byProcess = r.cpuSecondsByProcess ?? {};
    if (Object.keys(byProcess).length < 2 || !Number.isFinite(r.iops)) continue;
    const requests = r.iops * (config.runtime + config.ramp);
    const label = workloads.find((w) => w.name === r.workload)?.label ?? r.workload;
    for (const [proc, seconds] of Object.entries(byProcess))
      out.push([label, r.server, proc, fmt((seconds / requests) * 1e6, 1)]);
  }
  return out;
}
