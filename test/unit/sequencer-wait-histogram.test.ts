import { describe, expect, it } from "vitest";
import { WaitHistogram } from "../../src/sequencer/wait-histogram.js";

describe("WaitHistogram", () => {
  it("keeps count, sum and max", () => {
    const h = new WaitHistogram();
    for (const w of [0, 0.5, 2, 10]) h.record(w);
    expect(h.count).toBe(4);
    expect(h.sum).toBe(12.5);
    expect(h.max).toBe(10);
  });

  it("puts waits in power-of-two microsecond buckets", () => {
    const h = new WaitHistogram();
    h.record(0.0005); // 0.5 µs: under 1 µs
    h.record(0.0015); // 1.5 µs: [1, 2) µs
    h.record(0.003); // 3 µs: [2, 4) µs
    h.record(1e9); // beyond the last bound
    const b = h.buckets();
    expect(b[0]).toEqual({ le: 0.001, count: 1 });
    expect(b[1]).toEqual({ le: 0.002, count: 2 });
    expect(b[2]).toEqual({ le: 0.004, count: 3 });
    expect(b.at(-2)!.count).toBe(3);
    expect(b.at(-1)).toEqual({ le: Infinity, count: 4 });
  });

  it("counts a negative or NaN wait as zero", () => {
    const h = new WaitHistogram();
    h.record(-3);
    h.record(NaN);
    expect(h.count).toBe(2);
    expect(h.sum).toBe(0);
    expect(h.buckets()[0]!.count).toBe(2);
  });

  it("estimates quantiles within the bucket and never above the max", () => {
    const h = new WaitHistogram();
    expect(h.quantile(0.5)).toBe(0);
    for (let i = 0; i < 99; i++) h.record(0.01); // 10 µs: [8, 16) µs
    h.record(5); // 5 ms
    const p50 = h.quantile(0.5);
    expect(p50).toBeGreaterThanOrEqual(0.008);
    expect(p50).toBeLessThanOrEqual(0.016);
    expect(h.quantile(1)).toBe(5);
    expect(h.quantile(0.999)).toBeLessThanOrEqual(5);
    expect(h.quantile(0.999)).toBeGreaterThan(2.048);
    const s = h.snapshot();
    expect(s.p99).toBeLessThanOrEqual(0.016);
    expect(s.count).toBe(100);
  });
});
