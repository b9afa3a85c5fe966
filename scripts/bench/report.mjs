// From raw runs to medians, ratios and the printed and markdown tables.

/** The per-run numbers that are summarised, and which way is better. */
export const METRICS = [
  { key: "iops", label: "IOPS", higherIsBetter: true, digits: 0 },
  { key: "mibps", label: "MiB/s", higherIsBetter: true, digits: 1 },
  { key: "p99Us", label: "p99 µs", higherIsBetter: false, digits: 0 },
  { key: "rssMiB", label: "peak RSS MiB", higherIsBetter: false, digits: 1 },
];

/** @param {number[]} values */
export function median(values) {
  const sorted = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * One row per (workload, server): the median of every metric over the runs that
 * succeeded, and the IOPS spread (max − min) / median as a noise indicator.
 */
export function summarize(runs, workloads, servers) {
  const rows = [];
  for (const workload of workloads) {
    for (const server of servers) {
      const mine = runs.filter((r) => r.workload === workload.name && r.server === server.name);
      if (mine.length === 0) continue; // not in the plan (a mirror outside --mirror-workloads)
      const ok = mine.filter((r) => r.error === undefined);
      const row = {
        workload: workload.name,
        server: server.name,
        runs: mine.length,
        ok: ok.length,
      };
      for (const metric of METRICS) row[metric.key] = median(ok.map((r) => r[metric.key]));
      row.cpuSeconds = median(ok.map((r) => r.cpuSeconds));
      const cpuLabels = [...new Set(ok.flatMap((r) => Object.keys(r.cpuSecondsByProcess ?? {})))];
      row.cpuSecondsByProcess = Object.fromEntries(
        cpuLabels.map((label) => [label, median(ok.map((r) => r.cpuSecondsByProcess?.[label]))]),
      );
      const labels = [...new Set(ok.flatMap((r) => Object.keys(r.rssMiBByProcess ?? {})))];
      row.rssMiBByProcess = Object.fromEntries(
        labels.map((label) => [label, median(ok.map((r) => r.rssMiBByProcess?.[label]))]),
      );
      row.loadAverage1m = median(mine.map((r) => r.loadAverage1m));
      const mirrored = ok.filter((r) => r.mirror !== undefined);
      if (mirrored.length > 0) {
        row.mirror = {
          lagBytes: median(mirrored.map((r) => r.mirror.lagBytes)),
          lagBytesMax: Math.max(...mirrored.map((r) => r.mirror.lagBytes)),
          lagMs: median(mirrored.map((r) => r.mirror.lagMs ?? NaN)),
          drainSeconds: median(mirrored.map((r) => r.mirror.drainSeconds)),
          underBound: mirrored.filter((r) => r.mirror.underBound).length,
          of: mirrored.length,
          bound: mirrored[0]?.mirror.bound ?? "none",
          states: [...new Set(mirrored.map((r) => r.mirror.state))],
        };
      }
      const copies = mine
        .filter((r) => r.initialCopySeconds !== undefined)
        .map((r) => r.initialCopySeconds);
      if (copies.length > 0) row.initialCopySeconds = copies;
      const iops = ok.map((r) => r.iops);
      row.iopsSpread = ok.length > 1 ? (Math.max(...iops) - Math.min(...iops)) / row.iops : 0;
      rows.push(row);
    }
  }
  return rows;
}

/** subject ÷ reference for every metric, per workload, for each listed pair in the run. */
export function comparisons(summary, workloads, pairs) {
  const out = [];
  const find = (w, s) => summary.find((row) => row.workload === w && row.server === s);
  for (const workload of workloads)
    for (const { subject, reference } of pairs) {
      const a = find(workload.name, subject);
      const b = find(workload.name, reference);
      if (a === undefined || b === undefined) continue;
      const entry = { workload: workload.name, subject, reference };
      for (const metric of METRICS) entry[metric.key] = a[metric.key] / b[metric.key];
      out.push(entry);
    }
  return out;
}

/** The 1-minute load average sampled at the start of each run: min, median, max. */
export function loadSummary(runs) {
  const values = runs.map((r) => r.loadAverage1m).filter(Number.isFinite);
  if (values.length === 0) return null;
  return { min: Math.min(...values), median: median(values), max: Math.max(...values) };
}

/** subject ÷ reference for every metric, within each group, per workload. */
export function ratios(summary, workloads, servers) {
  const out = [];
  const find = (w, s) => summary.find((row) => row.workload === w && row.server === s);
  for (const workload of workloads) {
    for (const subject of servers.filter((s) => s.role === "subject")) {
      const refs = servers.filter((s) => s.role === "reference" && s.group === subject.group);
      for (const reference of refs) {
        const a = find(workload.name, subject.name);
        const b = find(workload.name, reference.name);
        const entry = { workload: workload.name, subject: subject.name, reference: reference.name };
        for (const metric of METRICS)
          entry[metric.key] = (a?.[metric.key] ?? NaN) / (b?.[metric.key] ?? NaN);
        out.push(entry);
      }
    }
  }
  return out;
}

const RATIO_HEADER = ["IOPS ×", "MiB/s ×", "p99 ×", "RSS ×"];

/** Rows of cells (header first) shared by the terminal and the markdown table. */
export function tableRows(summary, ratioList, workloads) {
  const header = ["workload", "server", "IOPS", "MiB/s", "p99 µs", "peak RSS MiB", "IOPS spread"];
  const withRatios = ratioList.length > 0;
  const rows = [withRatios ? header.concat(RATIO_HEADER) : header];
  for (const row of summary) {
    const workload = workloads.find((w) => w.name === row.workload);
    const ratio = ratioList.find((r) => r.workload === row.workload && r.reference === row.server);
    const failed = row.ok === 0;
    const cells = [
      workload?.label ?? row.workload,
      row.ok < row.runs ? `${row.server} (${row.ok}/${row.runs} ok)` : row.server,
      ...METRICS.map((m) => (failed ? "failed" : metricCell(row, m))),
      failed ? "" : `${fmt(row.iopsSpread * 100, 0)}%`,
    ];
    if (withRatios)
      cells.push(...METRICS.map((m) => (ratio === undefined ? "" : fmtRatio(ratio[m.key]))));
    rows.push(cells);
  }
  return rows;
}

/** Peak RSS of a multi-process server is shown per process: "primary 70 / secondary 65". */
function metricCell(row, metric) {
  const parts = Object.entries(row.rssMiBByProcess ?? {});
  if (metric.key !== "rssMiB" || parts.length < 2) return fmt(row[metric.key], metric.digits);
  return parts.map(([label, mib]) => `${label} ${fmt(mib, 0)}`).join(" / ");
}

/** The mirrors' own figures: initial copy, lag at the end of the runs, drain time. */
export function mirrorRows(summary, workloads) {
  const rows = [
    [
      "workload",
      "server",
      "initial copy s",
      "lag at end (median, max)",
      "lag bound",
      "drain s",
      "state",
    ],
  ];
  for (const row of summary) {
    const m = row.mirror;
    if (m === undefined) continue;
    const workload = workloads.find((w) => w.name === row.workload);
    const lag =
      m.lagBytesMax === 0
        ? "0 (in sync)"
        : `${fmtBytes(m.lagBytes)}${Number.isFinite(m.lagMs) ? `, ${fmt(m.lagMs, 0)} ms` : ""}; max ${fmtBytes(m.lagBytesMax)}`;
    const bound =
      m.bound === "sync"
        ? `– (sync); ${m.underBound}/${m.of} ended in sync`
        : m.bound === "none"
          ? `none (unbounded); ${m.underBound}/${m.of} ended unsuspended`
          : `${m.bound}; ${m.underBound}/${m.of} ended under it`;
    rows.push([
      workload?.label ?? row.workload,
      row.server,
      (row.initialCopySeconds ?? []).map((s) => fmt(s, 1)).join(", "),
      lag,
      bound,
      fmt(m.drainSeconds, 1),
      m.states.join(", "),
    ]);
  }
  return rows;
}

/** The comparison table: one row per (workload, subject ÷ reference). */
export function comparisonRows(comparisonList, workloads) {
  const rows = [["workload", "subject ÷ reference", ...RATIO_HEADER]];
  for (const c of comparisonList) {
    const workload = workloads.find((w) => w.name === c.workload);
    rows.push([
      workload?.label ?? c.workload,
      `${c.subject} ÷ ${c.reference}`,
      ...METRICS.map((m) => fmtRatio(c[m.key])),
    ]);
  }
  return rows;
}

/** @param {number} bytes */
export function fmtBytes(bytes) {
  if (!Number.isFinite(bytes)) return "–";
  if (bytes < 2 ** 20) return `${fmt(bytes / 1024, 0)} KiB`;
  return `${fmt(bytes / 2 ** 20, 1)} MiB`;
}

export function ratioLegend(ratioList) {
  const subjects = [...new Set(ratioList.map((r) => r.subject))];
  if (subjects.length === 0) return "";
  return (
    `× columns: ${subjects.join(", ")} ÷ the server of that row (median ÷ median). ` +
    "IOPS and MiB/s: above 1 is better for the subject; p99 and RSS: below 1 is better."
  );
}

/** A plain-text table with right-aligned numbers. */
export function textTable(rows) {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => [...(r[i] ?? "")].length)));
  const pad = (cell, i) => {
    const space = " ".repeat(widths[i] - [...cell].length);
    return i < 2 ? cell + space : space + cell;
  };
  const lines = rows.map((r) => r.map(pad).join("  ").trimEnd());
  lines.splice(1, 0, widths.map((w) => "-".repeat(w)).join("  "));
  return lines.join("\n");
}

export function markdownTable(rows) {
  const line = (cells) => `| ${cells.join(" | ")} |`;
  const align = rows[0].map((_, i) => (i < 2 ? "---" : "---:"));
  return [line(rows[0]), line(align), ...rows.slice(1).map(line)].join("\n");
}

/** @param {number} value */
export function fmt(value, digits) {
  if (!Number.isFinite(value)) return "–";
  return value.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** @param {number} value */
export function fmtRatio(value) {
  return Number.isFinite(value) ? value.toFixed(2) : "–";
}
