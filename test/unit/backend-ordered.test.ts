// OrderedFilter over a fake volume whose completions the test controls. The fake
// applies a write when it completes, like a device that may finish requests in
// any order: only the filter keeps overlapping writes in call order.
import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { OrderedFilter } from "../../src/backend/ordered.js";
import type { Backend, Capabilities, Extent } from "../../src/backend/types.js";

const SIZE = 256;

interface DeviceOp {
  readonly kind: "write" | "zero" | "trim" | "flush";
  readonly offset: number;
  readonly length: number;
  readonly label: string;
  apply(): void;
  resolve(): void;
  reject(err: Error): void;
}

class ControlledDevice implements Backend {
  readonly size = SIZE;
  readonly capabilities: Capabilities = {
    readOnly: false,
    flush: true,
    fua: true,
    trim: true,
    zero: true,
    fastZero: false,
    cache: false,
    blockStatus: false,
    multiConn: false,
  };
  readonly image = Buffer.alloc(SIZE);
  /** Operations issued to the device and not completed yet, in issue order. */
  readonly pending: DeviceOp[] = [];

  private issue(kind: DeviceOp["kind"], offset: number, length: number, apply: () => void) {
    return new Promise<void>((resolve, reject) => {
      const label = kind === "flush" ? "flush" : `${kind}@${offset}+${length}`;
      this.pending.push({ kind, offset, length, label, apply, resolve, reject });
    });
  }

  write(data: Buffer, offset: number): Promise<void> {
    return this.issue("write", offset, data.length, () => data.copy(this.image, offset));
  }
  zero(offset: number, length: number): Promise<void> {
    return this.issue("zero", offset, length, () => this.image.fill(0, offset, offset + length));
  }
  trim(offset: number, length: number): Promise<void> {
    return this.issue("trim", offset, length, () => this.image.fill(0, offset, offset + length));
  }
  flush(): Promise<void> {
    return this.issue("flush", 0, 0, () => undefined);
  }
  read(into: Buffer, offset: number): Promise<void> {
    this.image.copy(into, 0, offset, offset + into.length);
    return Promise.resolve();
  }
  cache(): Promise<void> {
    return Promise.resolve();
  }
  blockStatus(_offset: number, length: number): Promise<Extent[]> {
    return Promise.resolve([{ length, flags: 0 }]);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }

  labels(): string[] {
    return this.pending.map((op) => op.label);
  }

  /** Complete the pending operation with this label (it takes effect now). */
  complete(label: string): void {
    const op = this.take(label);
    op.apply();
    op.resolve();
  }

  fail(label: string): void {
    this.take(label).reject(new Error(`${label} failed`));
  }

  private take(label: string): DeviceOp {
    const i = this.pending.findIndex((op) => op.label === label);
    if (i < 0) throw new Error(`${label} is not pending; pending: ${this.labels().join(", ")}`);
    return this.pending.splice(i, 1)[0] as DeviceOp;
  }
}

const settle = async (): Promise<void> => {
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
};

function setup() {
  const device = new ControlledDevice();
  return { device, ordered: new OrderedFilter(device) };
}

describe("OrderedFilter", () => {
  it("the fake device alone applies overlapping writes in completion order", async () => {
    // The control experiment: without the filter, reverse completion reorders the writes.
    const device = new ControlledDevice();
    const a = device.write(Buffer.from("AAAA"), 0);
    const b = device.write(Buffer.from("BB"), 2);
    device.complete("write@2+2");
    device.complete("write@0+4");
    await Promise.all([a, b]);
    expect(device.image.toString("latin1", 0, 4)).toBe("AAAA");
  });

  it("overlapping writes reach the device in call order", async () => {
    const { device, ordered } = setup();
    const a = ordered.write(Buffer.from("AAAA"), 0, 0);
    const b = ordered.write(Buffer.from("BB"), 2, 0);
    await settle();
    expect(device.labels()).toEqual(["write@0+4"]);
    device.complete("write@0+4");
    await a;
    await settle();
    expect(device.labels()).toEqual(["write@2+2"]);
    device.complete("write@2+2");
    await b;
    expect(device.image.toString("latin1", 0, 4)).toBe("AABB");
  });

  it("every write waits for the one before it, overlapping or not", async () => {
    // Strict arrival order: a crash of the secondary then leaves a prefix of the stream.
    const { device, ordered } = setup();
    const done = [
      ordered.write(Buffer.alloc(10), 0, 0),
      ordered.write(Buffer.alloc(10), 100, 0),
      ordered.zero(30, 5, 0),
      ordered.trim(200, 10, 0),
    ];
    for (const label of ["write@0+10", "write@100+10", "zero@30+5", "trim@200+10"]) {
      await settle();
      expect(device.labels()).toEqual([label]);
      device.complete(label);
    }
    await Promise.all(done);
  });

  it("zero and trim are ordered against writes too", async () => {
    const { device, ordered } = setup();
    const w = ordered.write(Buffer.from("XXXXXXXX"), 0, 0);
    const z = ordered.zero(2, 2, 0);
    const t = ordered.trim(6, 4, 0);
    await settle();
    expect(device.labels()).toEqual(["write@0+8"]);
    device.complete("write@0+8");
    await settle();
    expect(device.labels()).toEqual(["zero@2+2"]);
    device.complete("zero@2+2");
    await settle();
    expect(device.labels()).toEqual(["trim@6+4"]);
    device.complete("trim@6+4");
    await Promise.all([w, z, t]);
    expect(device.image.toString("latin1", 0, 8)).toBe("XX\0\0XX\0\0");
  });

  it("flush waits for every earlier write, not for later ones", async () => {
    const { device, ordered } = setup();
    const a = ordered.write(Buffer.alloc(4, 1), 0, 0);
    const b = ordered.write(Buffer.alloc(4, 2), 100, 0);
    const flushed = ordered.flush();
    const later = ordered.write(Buffer.alloc(4, 3), 200, 0);
    await settle();
    expect(device.labels()).toEqual(["write@0+4"]);
    device.complete("write@0+4");
    await settle();
    expect(device.labels()).toEqual(["write@100+4"]);
    device.complete("write@100+4");
    await settle();
    expect([...device.labels()].sort()).toEqual(["flush", "write@200+4"]);
    device.complete("flush");
    await flushed;
    device.complete("write@200+4");
    await Promise.all([a, b, later]);
  });

  it("a failed write does not block the ones after it, and its caller sees the error", async () => {
    const { device, ordered } = setup();
    const a = ordered.write(Buffer.from("AAAA"), 0, 0);
    const b = ordered.write(Buffer.from("BB"), 2, 0);
    const flushed = ordered.flush();
    await settle();
    device.fail("write@0+4");
    await expect(a).rejects.toThrow("write@0+4 failed");
    await settle();
    device.complete("write@2+2");
    await b;
    await settle();
    device.complete("flush");
    await flushed;
    expect(device.image.toString("latin1", 0, 4)).toBe("\0\0BB");
  });

  it("reads pass straight through", async () => {
    const { device, ordered } = setup();
    device.image.write("hello", 10, "latin1");
    const into = Buffer.alloc(5);
    await ordered.read(into, 10);
    expect(into.toString("latin1")).toBe("hello");
  });
});

const writeArb = fc.record({
  offset: fc.nat({ max: 63 }),
  length: fc.integer({ min: 1, max: 16 }),
});

describe("OrderedFilter properties", () => {
  fcTest.prop([
    fc.array(writeArb, { minLength: 1, maxLength: 12 }),
    fc.array(fc.nat(), { maxLength: 40 }),
  ])(
    "any completion order leaves the image of the writes applied in call order",
    async (writes, picks) => {
      const { device, ordered } = setup();
      const model = Buffer.alloc(SIZE);
      const done = writes.map((w, i) => {
        const data = Buffer.alloc(w.length, i + 1);
        data.copy(model, w.offset);
        return ordered.write(data, w.offset, 0);
      });
      let pick = 0;
      for (
        let round = 0;
        round < 100 && device.pending.length + (await pendingCalls(done)) > 0;
        round++
      ) {
        await settle();
        const pending = device.pending;
        // Never two overlapping writes at the device at once.
        for (const x of pending)
          for (const y of pending)
            if (x !== y)
              expect(x.offset < y.offset + y.length && y.offset < x.offset + x.length).toBe(false);
        if (pending.length === 0) continue;
        const op = pending[
          (picks[pick++ % Math.max(picks.length, 1)] ?? 0) % pending.length
        ] as DeviceOp;
        device.complete(op.label);
      }
      await Promise.all(done);
      expect(device.image.equals(model)).toBe(true);
    },
  );
});

/** How many of these promises are still unsettled. */
async function pendingCalls(promises: readonly Promise<void>[]): Promise<number> {
  const marker = Symbol("pending");
  const states = await Promise.all(
    promises.map((p) => Promise.race([p.then(() => "done"), Promise.resolve(marker)])),
  );
  return states.filter((s) => s === marker).length;
}
