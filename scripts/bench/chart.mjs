// An SVG bar chart of the ratios, drawn by hand (no chart library): one horizontal
// bar per workload, baseline and metric, from 1× to the ratio on a log2 axis, so
// that 2× and 0.5× are the same length. Green is better for the subject, red worse.
import { fmtRatio } from "./report.mjs";

const CHART_METRICS = [
  { key: "iops", label: "IOPS", higherIsBetter: true },
  { key: "p99Us", label: "p99 latency", higherIsBetter: false },
  { key: "rssMiB", label: "peak RSS", higherIsBetter: false },
];

const WIDTH = 960;
const PLOT_LEFT = 440;
const PLOT_RIGHT = 890;
const ROW = 20;
const HEADER = 28;
const GOOD = "#2f9e44";
const BAD = "#e03131";

/**
 * @param {{ title: string, subtitle: string, ratioList: object[], workloads: object[] }} input
 * @returns {string}
 */
export function ratioChart({ title, subtitle, ratioList, workloads }) {
  const finite = ratioList.flatMap((r) => CHART_METRICS.map((m) => r[m.key]));
  const spread = Math.max(
    1,
    ...finite.filter((v) => v > 0 && Number.isFinite(v)).map((v) => Math.abs(Math.log2(v))),
  );
  const exponent = Math.min(6, Math.ceil(spread));
  const x = (ratio) => {
    const e = Math.max(-exponent, Math.min(exponent, Math.log2(ratio)));
    return PLOT_LEFT + ((e + exponent) / (2 * exponent)) * (PLOT_RIGHT - PLOT_LEFT);
  };
  const one = x(1);

  const body = [];
  let y = 78;
  for (const workload of workloads) {
    const entries = ratioList.filter((r) => r.workload === workload.name);
    if (entries.length === 0) continue;
    body.push(text(16, y + 18, workload.label, { weight: "bold", size: 14 }));
    y += HEADER;
    for (const entry of entries) {
      for (const metric of CHART_METRICS) {
        const ratio = entry[metric.key];
        const label = `${entry.subject} ÷ ${entry.reference} · ${metric.label}`;
        body.push(text(PLOT_LEFT - 64, y + 14, label, { anchor: "end" }));
        if (Number.isFinite(ratio) && ratio > 0) {
          const end = x(ratio);
          const better = metric.higherIsBetter ? ratio >= 1 : ratio <= 1;
          const left = Math.min(one, end);
          const width = Math.max(1, Math.abs(end - one));
          body.push(
            `<rect x="${left.toFixed(1)}" y="${y + 3}" width="${width.toFixed(1)}" height="${ROW - 6}" fill="${better ? GOOD : BAD}"/>`,
          );
          const towardsRight = end >= one;
          const clipped = Math.abs(Math.log2(ratio)) > exponent ? "…" : "";
          body.push(
            text(towardsRight ? end + 4 : end - 4, y + 14, `${fmtRatio(ratio)}×${clipped}`, {
              anchor: towardsRight ? "start" : "end",
            }),
          );
        } else {
          body.push(text(one + 4, y + 14, "no data", { fill: "#868e96" }));
        }
        y += ROW;
      }
    }
    y += 6;
  }

  const top = 64;
  const grid = [];
  for (let e = -exponent; e <= exponent; e++) {
    const gx = x(2 ** e).toFixed(1);
    const strong = e === 0;
    grid.push(
      `<line x1="${gx}" y1="${top}" x2="${gx}" y2="${y}" stroke="${strong ? "#343a40" : "#dee2e6"}" stroke-width="${strong ? 1.5 : 1}"/>`,
    );
    grid.push(text(Number(gx), y + 16, tickLabel(e), { anchor: "middle", size: 11 }));
  }
  const legendY = y + 40;
  const legend = [
    `<rect x="16" y="${legendY - 10}" width="12" height="12" fill="${GOOD}"/>`,
    text(34, legendY, "better for the subject", {}),
    `<rect x="200" y="${legendY - 10}" width="12" height="12" fill="${BAD}"/>`,
    text(218, legendY, "worse", {}),
    text(
      280,
      legendY,
      "IOPS: higher is better; latency and RSS: lower is better. MiB/s ratio = IOPS ratio. Log scale.",
      { fill: "#495057" },
    ),
  ];
  const height = legendY + 16;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    text(16, 26, title, { weight: "bold", size: 16 }),
    text(16, 46, subtitle, { fill: "#495057" }),
    ...grid,
    ...body,
    ...legend,
    "</svg>",
    "",
  ].join("\n");
}

function tickLabel(e) {
  return e >= 0 ? `${2 ** e}×` : `1/${2 ** -e}×`;
}

/**
 * @param {number} x
 * @param {number} y
 * @param {string} content
 * @param {{ anchor?: string, weight?: string, size?: number, fill?: string }} style
 */
function text(x, y, content, style) {
  const attrs = [`x="${x.toFixed(1)}"`, `y="${y}"`];
  if (style.anchor !== undefined) attrs.push(`text-anchor="${style.anchor}"`);
  if (style.weight !== undefined) attrs.push(`font-weight="${style.weight}"`);
  if (style.size !== undefined) attrs.push(`font-size="${style.size}"`);
  if (style.fill !== undefined) attrs.push(`fill="${style.fill}"`);
  return `<text ${attrs.join(" ")}>${escapeXml(content)}</text>`;
}

/** @param {string} s */
function escapeXml(s) {
  return s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}
