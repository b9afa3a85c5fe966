// `npm run fuzz -- [--duration 10m] [--seed N] [--workers N] [--out DIR]`: fuzz a
// live peercopy NBD server (test/fuzz/harness.ts) for as long as asked, with a
// progress line every ten seconds and the report as JSON at the end. Exit 1 on a
// crash, on a valid client whose data did not survive, or on a server that stopped
// answering; the crashing inputs are written under --out (default fuzz-crashes/).
import { parseArgs } from "node:util";
import { fuzzServer, type FuzzReport } from "../test/fuzz/harness.js";

const { values } = parseArgs({
  options: {
    duration: { type: "string", default: "60s" },
    seed: { type: "string" },
    workers: { type: "string", default: "4" },
    out: { type: "string", default: "fuzz-crashes" },
  },
});

function duration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text);
  if (m === null) throw new Error(`--duration "${text}": use e.g. 30s, 10m or 2h`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as "ms" | "s" | "m" | "h"];
  return Number(m[1]) * unit;
}

const seed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed);
const durationMs = duration(values.duration);
let lastLine = 0;
const line = (r: FuzzReport): string =>
  `${((performance.now() - started) / 1000).toFixed(0)} s: ${r.inputs} inputs (${r.generated} generated, ${r.mutated} mutated), ${(r.bytesSent / 1e6).toFixed(1)} MB, server closed ${r.closedByServer}, RSS ${(r.rssBytes / 2 ** 20).toFixed(0)} MiB (peak ${(r.maxRssBytes / 2 ** 20).toFixed(0)} MiB), valid writes ${r.validWrites}`;
const started = performance.now();
console.error(`fuzzing for ${values.duration} with seed ${seed}`);
const report = await fuzzServer({
  seed,
  durationMs,
  workers: Number(values.workers),
  crashDir: values.out,
  progress: (r) => {
    if (performance.now() - lastLine < 10_000) return;
    lastLine = performance.now();
    console.error(line(r));
  },
});
console.error(line(report));
process.stdout.write(`${JSON.stringify({ ...report, crashInputs: report.crashInputs.length })}\n`);
const ok = report.crashes === 0 && report.validExact && report.serverResponsive;
if (!ok) console.error(`FAILED: ${report.validError ?? ""} (crash inputs in ${values.out}/)`);
process.exitCode = ok ? 0 : 1;
