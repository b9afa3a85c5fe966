// The latency benchmark's chart, drawn by hand as SVG (no chart library): on
// the left the sync QD1 p50 against the added one-way latency, next to what the
// added round trip predicts over the idle baseline; on the right the IOPS of every configuration on a
// log scale. Async points where the lag was held at its bound are hollow.
import { fmt } from "./report.mjs";

const WIDTH = 960;
const HEIGHT = 490;
const PANEL = { top: 84, bottom: 364, width: 380 };
const LEFT_X = 70;
const RIGHT_X = 540;
const COLOURS = {
  sync1: "#1971c2",
  sync32: "#74c0fc",
  async1: "#e8590c",
  async32: "#ffa94d",
  expected: "#868e96",
};

/**
 * @param {{ series: object[], maxLag: number, subtitle: string }} input
 * @returns {string}
 */
export function latencyChart({ series, maxLag, subtitle }) {
  const maxLatency = Math.max(...series.map((s) => s.latency), 1);
  const xOf = (left) => (latency) => left + (latency / maxLatency) * PANEL.width;
  const out = [];

  // Left: sync QD1 p50, measured and predicted (p50 at 0 ms + 2 × one-way latency).
  const x1 = xOf(LEFT_X);
  const base = series[0].s1.p50Us / 1000;
  const measured = series.map((s) => [s.latency, s.s1.p50Us / 1000]);
  // The idle baseline (0 ms, as long between writes) plus the round trip.
  const predicted = series.map((s) => [
    s.latency,
    (s.latency === 0 || !Number.isFinite(s.idleUs) ? base : s.idleUs / 1000) + 2 * s.latency,
  ]);
  const top = Math.max(...measured.map((p) => p[1]), ...predicted.map((p) => p[1])) * 1.1;
  const y1 = (ms) => PANEL.bottom - (ms / top) * (PANEL.bottom - PANEL.top);
  out.push(...axes(LEFT_X, series, x1, "added one-way latency (ms)"));
  for (const tick of niceTicks(top)) {
    out.push(gridLine(LEFT_X, y1(tick)), text(LEFT_X - 6, y1(tick) + 4, fmt(tick, 0), "end"));
  }
  out.push(text(LEFT_X, PANEL.top - 14, "sync QD1: p50 write latency (ms)", "start", "bold"));
  const line = (points, colour, dashed) =>
    polyline(
      points.map(([l, v]) => [x1(l), y1(v)]),
      colour,
      dashed,
    );
  // The prediction on top, dashed, so that it shows where the two agree.
  out.push(line(measured, COLOURS.sync1, false), line(predicted, "#212529", true));
  for (const [l, v] of measured) {
    out.push(dot(x1(l), y1(v), COLOURS.sync1, true));
    out.push(text(x1(l) + 6, y1(v) - 6, fmt(v, 2), "start"));
  }

  // Right: IOPS, log scale.
  const x2 = xOf(RIGHT_X);
  const lines = [
    ["sync1", "sync QD1", (s) => s.s1, false],
    ["sync32", "sync QD32", (s) => s.s32, false],
    ["async1", "async QD1", (s) => s.a1, true],
    ["async32", "async QD32", (s) => s.a32, true],
  ];
  const all = series.flatMap((s) => [s.s1.iops, s.s32.iops, s.a1.iops, s.a32.iops]);
  const lo = 10 ** Math.floor(Math.log10(Math.max(1, Math.min(...all))));
  const hi = 10 ** Math.ceil(Math.log10(Math.max(...all)));
  const y2 = (iops) =>
    PANEL.bottom -
    ((Math.log10(iops) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) *
      (PANEL.bottom - PANEL.top);
  out.push(...axes(RIGHT_X, series, x2, "added one-way latency (ms)"));
  for (let v = lo; v <= hi; v *= 10) {
    out.push(gridLine(RIGHT_X, y2(v)), text(RIGHT_X - 6, y2(v) + 4, fmt(v, 0), "end"));
  }
  out.push(text(RIGHT_X, PANEL.top - 14, "4k random write IOPS (log scale)", "start", "bold"));
  lines.forEach(([key, label, pick, async], i) => {
    const points = series.map((s) => [x2(s.latency), y2(pick(s).iops)]);
    out.push(polyline(points, COLOURS[key], false));
    series.forEach((s, j) => {
      const [px, py] = points[j];
      out.push(dot(px, py, COLOURS[key], !(async && pick(s).bounded)));
    });
    const ly = PANEL.bottom + 66 + (i >> 1) * 18;
    const lx = RIGHT_X + (i & 1) * 150;
    out.push(`<rect x="${lx}" y="${ly - 9}" width="14" height="4" fill="${COLOURS[key]}"/>`);
    out.push(text(lx + 20, ly - 3, label, "start"));
  });
  out.push(
    text(
      LEFT_X,
      PANEL.bottom + 106,
      "dashed: p50 at 0 ms with as long between writes, + the added round trip (2 × one-way)",
      "start",
    ),
    text(
      LEFT_X,
      PANEL.bottom + 124,
      `hollow: async with the lag held at its bound (${fmt(maxLag / 2 ** 20, 0)} MiB, --on-lag block)`,
      "start",
    ),
  );
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    text(16, 24, "peercopy: distance in the loop (link emulator)", "start", "bold", 16),
    text(16, 42, subtitle, "start", undefined, 12, "#495057"),
    ...out,
    "</svg>",
    "",
  ].join("\n");
}

function axes(left, series, x, label) {
  const parts = [
    `<line x1="${left}" y1="${PANEL.bottom}" x2="${left + PANEL.width}" y2="${PANEL.bottom}" stroke="#343a40"/>`,
    `<line x1="${left}" y1="${PANEL.top}" x2="${left}" y2="${PANEL.bottom}" stroke="#343a40"/>`,
    text(left + PANEL.width / 2, PANEL.bottom + 34, label, "middle"),
  ];
  for (const s of series)
    parts.push(text(x(s.latency), PANEL.bottom + 16, String(s.latency), "middle"));
  return parts;
}

function niceTicks(top) {
  const step = 10 ** Math.floor(Math.log10(top / 2));
  const ticks = [];
  for (let v = 0; v <= top; v += step * (top / step > 10 ? 2 : 1)) ticks.push(v);
  return ticks;
}

function gridLine(left, y) {
  return `<line x1="${left}" y1="${y.toFixed(1)}" x2="${left + PANEL.width}" y2="${y.toFixed(1)}" stroke="#e9ecef"/>`;
}

function polyline(points, colour, dashed) {
  const d = points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  const dash = dashed ? ` stroke-dasharray="6 4"` : "";
  return `<polyline points="${d}" fill="none" stroke="${colour}" stroke-width="2"${dash}/>`;
}

function dot(x, y, colour, filled) {
  const fill = filled ? colour : "#ffffff";
  return `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="4" fill="${fill}" stroke="${colour}" stroke-width="2"/>`;
}

function text(x, y, content, anchor, weight, size, fill) {
  const attrs = [`x="${x.toFixed(1)}"`, `y="${y.toFixed(1)}"`, `text-anchor="${anchor}"`];
  if (weight !== undefined) attrs.push(`font-weight="${weight}"`);
  if (size !== undefined) attrs.push(`font-size="${size}"`);
  if (fill !== undefined) attrs.push(`fill="${fill}"`);
  const safe = String(content).replaceAll("&", "&amp;").replaceAll("<", "&lt;");
  return `<text ${attrs.join(" ")}>${safe}</text>`;
}
