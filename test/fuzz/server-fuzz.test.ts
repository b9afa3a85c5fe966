// A few seconds of the fuzzer (harness.ts) against a live server process, in
// every `npm test`: no crash, bounded memory, the well-behaved client's data
// exact, the server still answering. PEERCOPY_FUZZ_SEED repeats a run; longer
// runs: npm run fuzz -- --duration 10m.
import { describe, expect, it } from "vitest";
import { fuzzServer } from "./harness.js";

describe("fuzzing the live server", () => {
  it("survives generated and mutated sessions beside a valid client", async () => {
    const seed = Number(process.env.PEERCOPY_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
    const report = await fuzzServer({ seed, durationMs: 4000, workers: 3 });
    const summary = `seed ${seed}: ${report.inputs} inputs, peak RSS ${(report.maxRssBytes / 2 ** 20).toFixed(0)} MiB, ${report.validWrites} valid writes`;
    console.log(`fuzz ${summary}`);
    expect(report.crashes, summary).toBe(0);
    expect(report.validError, summary).toBeNull();
    expect(report.validExact, summary).toBe(true);
    expect(report.serverResponsive, summary).toBe(true);
    expect(report.inputs, summary).toBeGreaterThan(100);
    expect(report.validWrites, summary).toBeGreaterThan(10);
    // Three 16 MiB exports and the runtime: far below what a leak per input would reach.
    expect(report.maxRssBytes, summary).toBeLessThan(400 * 2 ** 20);
  });
});
