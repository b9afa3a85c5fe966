// The dashboard page served at GET /: one self-contained HTML document (no CDN,
// no external script) that polls /status, /dashboard/samples and
// /dashboard/tracks once a second and draws with plain canvas. A failed poll
// marks the page disconnected and keeps trying, so it picks up a restarted
// controller by itself (a new bootId resets the charts).
//
// Track map colours, which the browser test reads back from the canvas:
// a cell with no marked track is CLEAN, a fully marked one MARKED, a partly
// marked one in between.
export const MAP_COLORS = {
  clean: [38, 92, 62],
  marked: [230, 64, 42],
} as const;
/** Cells per row of the track map and the side of a cell in pixels. */
export const MAP_COLUMNS = 128;
export const MAP_CELL_PX = 4;

const STYLE = String.raw`
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #111619; color: #dde3e6; }
  header { display: flex; gap: 1em; align-items: baseline; padding: 0.6em 1em; background: #1b2327; }
  h1 { font-size: 1.2em; margin: 0; }
  h2 { font-size: 1em; margin: 0.8em 0 0.3em; color: #9fb0b8; font-weight: 600; }
  main { padding: 0 1em 1em; display: grid; grid-template-columns: minmax(320px, 560px) 1fr; gap: 0 2em; }
  .badge { padding: 0.1em 0.6em; border-radius: 0.8em; font-weight: 600; background: #555; }
  .good { background: #26633e; } .warn { background: #8a6d12; } .bad { background: #9b2a1f; }
  #conn.live { color: #6c6; } #conn.down { color: #f77; }
  body.stale main { opacity: 0.55; }
  dl { display: grid; grid-template-columns: 9em 1fr; margin: 0; gap: 0.15em 0.6em; }
  dl > div { display: contents; } [hidden] { display: none !important; }
  dt { color: #9fb0b8; } dd { margin: 0; font-variant-numeric: tabular-nums; }
  progress { width: 14em; vertical-align: middle; }
  canvas { background: #0b0f11; display: block; }
  #map { image-rendering: pixelated; border: 1px solid #2c373d; }
  .charts { display: grid; grid-template-columns: repeat(auto-fill, 372px); gap: 0.6em; }
  table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
  td, th { padding: 0.1em 0.8em 0.1em 0; text-align: left; }
  th { color: #9fb0b8; font-weight: 600; }
  .muted { color: #8899a0; }
`;

const SCRIPT = String.raw`
"use strict";
var CLEAN = ${JSON.stringify(MAP_COLORS.clean)}, MARKED = ${JSON.stringify(MAP_COLORS.marked)};
var COLS = ${MAP_COLUMNS}, CELL = ${MAP_CELL_PX}, WINDOW_MS = 5 * 60 * 1000;
var bootId = null, since = 0, samples = [], lastMap = null;
function $(id) { return document.getElementById(id); }
function text(id, v) { var e = $(id); if (e) e.textContent = v; return e; }
function bytes(n) {
  var u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return i === 0 ? n + " B" : n.toFixed(1) + " " + u[i];
}
function duration(s) {
  s = Math.round(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}
function plural(n, w) { return n + " " + w + (n === 1 ? "" : "s"); }
function getJson(path) {
  return fetch(path, { cache: "no-store" }).then(function (r) {
    return r.json().then(function (body) {
      if (!r.ok) throw new Error(path + ": " + (body && body.error ? body.error : r.status));
      return body;
    });
  });
}
function stateClass(s) {
  if (s === "full-duplex" || s === "secondary") return "good";
  if (s === "split-brain" || s === "failed") return "bad";
  return "warn";
}
function why(s) {
  var p = [];
  if (s.suspendReason) p.push(s.suspendReason);
  if (s.stateDetail) p.push(s.stateDetail);
  if (s.demoted) p.push("demoted: host writes are refused");
  if (s.promoted) p.push("promoted: hosts may write, changes are recorded");
  var pair = s.pair || {};
  if (s.role === "secondary" && pair.inconsistent) p.push("a resync is writing it: not a state the primary ever had");
  if (s.role === "secondary" && pair.fresh) p.push("never completed a copy from a primary");
  return p.join("; ");
}
function progress(name, p) {
  var row = $(name + "-row");
  if (!p) { row.hidden = true; return; }
  row.hidden = false;
  var total = p.totalTracks || 0;
  var done = p.copiedTracks != null ? p.copiedTracks : (p.checkedTracks != null ? p.checkedTracks : (p.doneTracks || 0));
  var bar = $(name + "-bar");
  bar.max = Math.max(1, total);
  bar.value = p.running ? done : total;
  var t;
  if (p.running) {
    t = (total === 0 ? 100 : Math.floor(done / total * 100)) + "% (" + done + "/" + total + " tracks)";
    if (p.bytesPerSecond != null) t += ", " + bytes(p.bytesPerSecond) + "/s";
    t += p.etaSeconds == null ? ", ETA unknown" : ", ETA " + duration(p.etaSeconds);
  } else {
    t = total === 0 ? "idle" : "idle; the last one did " + done + "/" + total + " tracks";
  }
  if (p.rateLimit) t += ", limit " + bytes(p.rateLimit) + "/s";
  text(name + "-text", t);
}
// The link emulator's or the disk fault filter's settings that do something, and its counts.
var MS = /Ms$/, RANGE = /RangeOffset$/;
function faults(f) {
  var p = [];
  Object.keys(f).forEach(function (k) {
    var v = f[k];
    if (typeof v !== "number" || /RangeLength$/.test(k)) return;
    if (RANGE.test(k)) {
      var len = f[k.replace(RANGE, "RangeLength")] || 0;
      p.push(words(k.replace(RANGE, "Range")) + " " + bytes(v) + "+" + bytes(len));
    } else if (v !== 0) {
      if (MS.test(k)) p.push(words(k.replace(MS, "")) + " " + v + " ms");
      else if (/BytesPerSecond$/.test(k)) p.push(words(k.replace(/BytesPerSecond$/, "")) + " " + bytes(v) + "/s");
      else if (/Rate$/.test(k)) p.push(words(k) + " " + (v * 100).toFixed(2).replace(/\.?0+$/, "") + "%");
      else p.push(words(k) + " " + v);
    }
  });
  return p.length ? p.join(", ") : "on, nothing set";
}
function words(k) { return k.replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase(); }
function renderStatus(s) {
  var host = s.host || {}, link = s.link || {}, lag = s.lag || {}, oos = s.outOfSync || {};
  text("role", s.role || "controller");
  text("uri", host.uri || "");
  var badge = text("pair-state", s.pairState || "unknown");
  badge.className = "badge " + stateClass(s.pairState);
  text("state-why", why(s));
  $("mode-row").hidden = !s.mode;
  text("mode", s.mode || "");
  if (link.state) {
    $("link-row").hidden = false; $("primary-row").hidden = true;
    text("link", link.state + (link.remote ? " to " + link.remote : "") + (link.ordered ? " (ordered)" : "") +
      ", " + (link.inFlight || 0) + " in flight, " + (link.queued || 0) + " queued, " + plural(link.reconnects || 0, "reconnect"));
  } else {
    $("link-row").hidden = true; $("primary-row").hidden = false;
    text("primary", s.primarySeenMsAgo == null ? "never connected" : "last request " + s.primarySeenMsAgo + " ms ago");
  }
  text("oos-tracks", String(oos.tracks || 0));
  var ob = text("oos-bytes", bytes(oos.bytes || 0));
  ob.dataset.bytes = String(oos.bytes || 0);
  $("lag-row").hidden = lag.writes == null;
  text("lag-writes", String(lag.writes || 0));
  var lb = text("lag-bytes", bytes(lag.bytes || 0));
  lb.dataset.bytes = String(lag.bytes || 0);
  text("lag-ms", String(lag.ms || 0));
  progress("resync", s.resync);
  progress("verify", s.verify);
  var e = s.errors || {}, errs = [];
  if (e.hostWrites) errs.push(plural(e.hostWrites, "host write error"));
  if (e.link) errs.push(plural(e.link, "link error"));
  var et = errs.length ? errs.join(", ") : "none";
  if (link.lastError) et += "; last: " + link.lastError;
  text("errors", et);
  $("faults-row").hidden = !link.emulation;
  if (link.emulation) text("faults", faults(link.emulation));
  $("disk-row").hidden = !s.diskFaults;
  if (s.diskFaults) text("disk-faults", faults(s.diskFaults));
  text("metadata", s.metadata || "none (marks are kept in memory only)");
  var pair = s.pair || {};
  text("generations", pair.current ? "current " + pair.current + ", bitmap " + pair.bitmap : "");
  document.title = "peercopy " + (s.role || "") + ": " + (s.pairState || "");
}
function renderMap(m) {
  var c = $("map");
  if (m.error) { text("map-legend", m.error); return; }
  lastMap = m;
  var raw = atob(m.data), n = m.cells, rows = Math.max(1, Math.ceil(n / COLS));
  c.width = COLS * CELL; c.height = rows * CELL;
  c.dataset.cells = String(n); c.dataset.tracksPerCell = String(m.tracksPerCell);
  var ctx = c.getContext("2d"), img = ctx.createImageData(c.width, c.height), d = img.data;
  for (var i = 0; i < n; i++) {
    var v = raw.charCodeAt(i), col;
    if (v === 0) col = CLEAN;
    else if (v === 255) col = MARKED;
    else {
      var f = 0.35 + 0.65 * v / 255;
      col = [0, 1, 2].map(function (k) { return Math.round(CLEAN[k] + (MARKED[k] - CLEAN[k]) * f); });
    }
    var x0 = (i % COLS) * CELL, y0 = Math.floor(i / COLS) * CELL;
    for (var y = y0; y < y0 + CELL; y++)
      for (var x = x0; x < x0 + CELL; x++) {
        var o = (y * c.width + x) * 4;
        d[o] = col[0]; d[o + 1] = col[1]; d[o + 2] = col[2]; d[o + 3] = 255;
      }
  }
  ctx.putImageData(img, 0, 0);
  text("map-legend", "one cell = " + plural(m.tracksPerCell, "track") + " (" + bytes(m.tracksPerCell * m.trackSize) +
    "); " + m.markedTracks + " of " + m.trackCount + " tracks out of sync");
}
function chart(id, title, series, unit) {
  var c = $(id), ctx = c.getContext("2d"), w = c.width, h = c.height, top = 18, bottom = h - 4;
  ctx.clearRect(0, 0, w, h);
  var now = samples.length ? samples[samples.length - 1].t : Date.now(), t0 = now - WINDOW_MS;
  var shown = samples.filter(function (s) { return s.t >= t0; });
  var max = 0;
  shown.forEach(function (s) { series.forEach(function (se) { max = Math.max(max, se.get(s)); }); });
  var peak = max;
  max = max > 0 ? max * 1.1 : 1;
  ctx.strokeStyle = "#2c373d"; ctx.lineWidth = 1;
  [0, 0.5, 1].forEach(function (f) { var y = bottom - (bottom - top) * f; ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke(); });
  series.forEach(function (se) {
    ctx.strokeStyle = se.color; ctx.lineWidth = 1.5; ctx.beginPath();
    shown.forEach(function (s, i) {
      var x = (s.t - t0) / WINDOW_MS * w, y = bottom - (bottom - top) * se.get(s) / max;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
  ctx.fillStyle = "#9fb0b8"; ctx.font = "12px system-ui, sans-serif";
  var last = shown[shown.length - 1];
  var label = title + (last ? ": " + series.map(function (se) { return (se.label ? se.label + " " : "") + fmt(se.get(last)); }).join(", ") : "") + " " + unit;
  ctx.fillText(label, 4, 13);
  ctx.textAlign = "right"; ctx.fillText("max " + fmt(peak), w - 4, 13); ctx.textAlign = "left";
}
function fmt(v) { if (Number.isInteger(v)) return String(v); return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2); }
function renderCharts() {
  chart("c-iops", "host IOPS", [
    { label: "read", color: "#5ab0f0", get: function (s) { return s.hostReadIops; } },
    { label: "write", color: "#f0a05a", get: function (s) { return s.hostWriteIops; } }], "");
  chart("c-host", "host", [
    { label: "read", color: "#5ab0f0", get: function (s) { return s.hostReadMiBps; } },
    { label: "write", color: "#f0a05a", get: function (s) { return s.hostWriteMiBps; } }], "MiB/s");
  chart("c-link", "link", [{ label: "sent", color: "#7ad67a", get: function (s) { return s.linkMiBps; } }], "MiB/s");
  chart("c-lag-bytes", "lag", [{ label: "", color: "#e0c050", get: function (s) { return s.lagBytes / 1048576; } }], "MiB");
  chart("c-lag-ms", "lag", [{ label: "", color: "#e0c050", get: function (s) { return s.lagMs; } }], "ms");
  chart("c-ooo", "out-of-order arrivals", [{ label: "", color: "#c080f0", get: function (s) { return s.outOfOrderPerSecond; } }], "/s");
  chart("c-wait", "sequencer wait", [
    { label: "mean", color: "#c080f0", get: function (s) { return s.waitMeanMs; } },
    { label: "p99", color: "#f07090", get: function (s) { return s.waitP99Ms; } }], "ms");
  chart("c-oos", "out of sync", [{ label: "", color: "#e6402a", get: function (s) { return s.outOfSyncTracks; } }], "tracks");
}
function renderChanges(list) {
  var body = $("changes-body");
  body.textContent = "";
  list.slice().reverse().forEach(function (c) {
    var tr = document.createElement("tr");
    [new Date(c.t).toLocaleTimeString(), (c.from || "start") + " \u2192 " + c.to, [c.reason, c.detail].filter(Boolean).join("; ")]
      .forEach(function (v) { var td = document.createElement("td"); td.textContent = v; tr.appendChild(td); });
    body.appendChild(tr);
  });
}
function setConn(ok, message) {
  var c = $("conn");
  c.className = ok ? "live" : "down";
  c.textContent = ok ? "live" : "disconnected (" + message + "); retrying every second";
  document.body.classList.toggle("stale", !ok);
  document.body.dataset.updated = ok ? String(Date.now()) : "";
}
function tick() {
  getJson("/status").then(function (s) {
    renderStatus(s);
    return getJson("/dashboard/samples?since=" + since);
  }).then(function (d) {
    if (d.bootId !== bootId) {
      var restarted = bootId !== null;
      bootId = d.bootId; samples = []; since = 0;
      if (restarted) return getJson("/dashboard/samples?since=0");
    }
    return d;
  }).then(function (d) {
    samples = samples.concat(d.samples).slice(-1200);
    if (samples.length) since = samples[samples.length - 1].seq;
    renderCharts();
    renderChanges(d.stateChanges);
    return getJson("/dashboard/tracks");
  }).then(function (m) {
    renderMap(m);
    setConn(true);
  }).catch(function (e) {
    setConn(false, e && e.message ? e.message : String(e));
  }).then(function () { setTimeout(tick, 1000); });
}
$("map").addEventListener("mousemove", function (ev) {
  if (!lastMap) return;
  var r = ev.target.getBoundingClientRect();
  var cell = Math.floor((ev.clientY - r.top) / CELL) * COLS + Math.floor((ev.clientX - r.left) / CELL);
  if (cell < 0 || cell >= lastMap.cells) return;
  var first = cell * lastMap.tracksPerCell;
  ev.target.title = "tracks " + first + "-" + (Math.min(lastMap.trackCount, first + lastMap.tracksPerCell) - 1) +
    " from byte " + first * lastMap.trackSize;
});
tick();
`;

export const DASHBOARD_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>peercopy</title>
<style>${STYLE}</style>
</head>
<body>
<header>
  <h1><span id="role">peercopy</span> <span id="uri" class="muted"></span></h1>
  <span id="pair-state" class="badge">…</span>
  <span id="state-why"></span>
  <span id="conn">connecting</span>
</header>
<main>
<section>
  <h2>Pair</h2>
  <dl>
    <div id="mode-row"><dt>mode</dt><dd><span id="mode"></span></dd></div>
    <div id="link-row"><dt>link</dt><dd><span id="link"></span></dd></div>
    <div id="primary-row" hidden><dt>primary</dt><dd><span id="primary"></span></dd></div>
    <div id="oos-row"><dt>out of sync</dt><dd><span id="oos-tracks">0</span> tracks (<span id="oos-bytes">0 B</span>)</dd></div>
    <div id="lag-row"><dt>lag</dt><dd><span id="lag-writes">0</span> writes, <span id="lag-bytes">0 B</span>, <span id="lag-ms">0</span> ms</dd></div>
    <div id="resync-row"><dt>resync</dt><dd><progress id="resync-bar" value="0" max="1"></progress> <span id="resync-text"></span></dd></div>
    <div id="verify-row" hidden><dt>verify</dt><dd><progress id="verify-bar" value="0" max="1"></progress> <span id="verify-text"></span></dd></div>
    <div id="errors-row"><dt>errors</dt><dd><span id="errors">none</span></dd></div>
    <div id="faults-row" hidden><dt>link emulation</dt><dd><span id="faults"></span></dd></div>
    <div id="disk-row" hidden><dt>disk faults</dt><dd><span id="disk-faults"></span></dd></div>
    <div id="metadata-row"><dt>metadata</dt><dd><span id="metadata"></span></dd></div>
    <div id="generations-row"><dt>generations</dt><dd><span id="generations"></span></dd></div>
  </dl>
  <h2>Out-of-sync tracks</h2>
  <canvas id="map" width="${MAP_COLUMNS * MAP_CELL_PX}" height="${MAP_CELL_PX}"></canvas>
  <p id="map-legend" class="muted"></p>
  <h2>Pair state changes <span class="muted">(as seen every 200 ms)</span></h2>
  <table><thead><tr><th>time</th><th>change</th><th>why</th></tr></thead><tbody id="changes-body"></tbody></table>
</section>
<section>
  <h2>Last 5 minutes</h2>
  <div class="charts">
    <canvas id="c-iops" width="372" height="110"></canvas>
    <canvas id="c-host" width="372" height="110"></canvas>
    <canvas id="c-link" width="372" height="110"></canvas>
    <canvas id="c-oos" width="372" height="110"></canvas>
    <canvas id="c-lag-bytes" width="372" height="110"></canvas>
    <canvas id="c-lag-ms" width="372" height="110"></canvas>
    <canvas id="c-ooo" width="372" height="110"></canvas>
    <canvas id="c-wait" width="372" height="110"></canvas>
  </div>
</section>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;
