import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { TaskTable } from "../../src/sequencer/task-table.js";

type Op = { readonly put: number } | { readonly del: number } | { readonly get: number };

const keyArb = fc.oneof(
  fc.nat(40),
  fc.maxSafeNat(),
  fc.nat(40).map((n) => n * 4096),
);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ put: keyArb }),
  fc.record({ del: keyArb }),
  fc.record({ get: keyArb }),
);

describe("TaskTable", () => {
  test.prop([fc.array(opArb, { maxLength: 300 })])("behaves like a Map", (ops) => {
    const table = new TaskTable<string>();
    const model = new Map<number, string>();
    ops.forEach((op, n) => {
      if ("put" in op) {
        if (model.has(op.put)) return; // insert() is only called for absent keys
        table.insert(op.put, `v${n}`);
        model.set(op.put, `v${n}`);
      } else if ("del" in op) {
        expect(table.delete(op.del)).toBe(model.delete(op.del));
      } else {
        expect(table.get(op.get)).toBe(model.get(op.get));
      }
      expect(table.size).toBe(model.size);
    });
    for (const [k, v] of model) expect(table.get(k)).toBe(v);
    expect(table.snapshot().sort()).toEqual([...model.values()].sort());
  });

  it("grows past many entries and shrinks back, keeping every entry", () => {
    const table = new TaskTable<number>();
    const n = 20_000;
    for (let k = 1; k <= n; k++) table.insert(k, k);
    for (let k = 1; k <= n; k++) if (k % 100 !== 0) table.delete(k);
    expect(table.size).toBe(n / 100);
    let found = 0;
    for (let k = 1; k <= n; k++) if (table.get(k) === k) found++;
    expect(found).toBe(n / 100);
    expect(table.has(150)).toBe(false);
    expect(table.has(200)).toBe(true);
  });
});
