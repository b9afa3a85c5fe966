// Filter passes every operation through unchanged; ReadOnlyFilter refuses the
// writing ones with EPERM and passes the rest through.
import { describe, expect, it } from "vitest";
import { NBD_EPERM } from "../../nbd/constants.js";
import { NbdRequestError } from "../../nbd/errors.js";
import { Filter, ReadOnlyFilter } from "../../src/backend/filter.js";
import type { Backend, Capabilities, Extent } from "../../src/backend/types.js";

const CAPS: Capabilities = {
  readOnly: false,
  flush: true,
  fua: false,
  trim: true,
  zero: false,
  fastZero: false,
  cache: true,
  blockStatus: true,
  multiConn: false,
};

/** Records each call with its arguments and returns a value that identifies it. */
class Recording implements Backend {
  readonly size = 12345;
  readonly capabilities = CAPS;
  readonly blockSizes = { minimum: 512, preferred: 4096, maximum: 1 << 20 };
  readonly calls: unknown[][] = [];
  readonly extents: Extent[] = [{ length: 7, flags: 3 }];

  read(into: Buffer, offset: number): Promise<void> {
    this.calls.push(["read", into, offset]);
    into.fill(0x5a);
    return Promise.resolve();
  }
  write(data: Buffer, offset: number, flags: number): Promise<void> {
    this.calls.push(["write", data, offset, flags]);
    return Promise.resolve();
  }
  flush(): Promise<void> {
    this.calls.push(["flush"]);
    return Promise.resolve();
  }
  trim(offset: number, length: number, flags: number): Promise<void> {
    this.calls.push(["trim", offset, length, flags]);
    return Promise.resolve();
  }
  zero(offset: number, length: number, flags: number): Promise<void> {
    this.calls.push(["zero", offset, length, flags]);
    return Promise.reject(new Error("zero failed below"));
  }
  cache(offset: number, length: number): Promise<void> {
    this.calls.push(["cache", offset, length]);
    return Promise.resolve();
  }
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.calls.push(["blockStatus", offset, length]);
    return Promise.resolve(this.extents);
  }
  close(): Promise<void> {
    this.calls.push(["close"]);
    return Promise.resolve();
  }
}

describe("Filter", () => {
  it("passes size, capabilities and block sizes through", () => {
    const below = new Recording();
    const f = new Filter(below);
    expect(f.size).toBe(12345);
    expect(f.capabilities).toBe(CAPS);
    expect(f.blockSizes).toBe(below.blockSizes);
  });

  it("passes every operation through with its arguments and results", async () => {
    const below = new Recording();
    const f = new Filter(below);
    const into = Buffer.alloc(4);
    const data = Buffer.from("data");
    await f.read(into, 1);
    await f.write(data, 2, 1);
    await f.flush();
    await f.trim(3, 4, 1);
    await expect(f.zero(5, 6, 2)).rejects.toThrow("zero failed below");
    await f.cache(7, 8);
    expect(await f.blockStatus(9, 10)).toBe(below.extents);
    await f.close();
    expect(into).toEqual(Buffer.alloc(4, 0x5a));
    expect(below.calls).toEqual([
      ["read", into, 1],
      ["write", data, 2, 1],
      ["flush"],
      ["trim", 3, 4, 1],
      ["zero", 5, 6, 2],
      ["cache", 7, 8],
      ["blockStatus", 9, 10],
      ["close"],
    ]);
    expect(below.calls[1]?.[1]).toBe(data); // the same buffer, not a copy
  });

  it("filters stack: an override in the middle is seen from the top", async () => {
    class Shift extends Filter {
      override write(d: Buffer, offset: number, flags: number): Promise<void> {
        return super.write(d, offset + 100, flags);
      }
    }
    const below = new Recording();
    await new Filter(new Shift(new Filter(below))).write(Buffer.from("x"), 1, 0);
    expect(below.calls[0]?.slice(2)).toEqual([101, 0]);
  });
});

describe("ReadOnlyFilter", () => {
  it("advertises read-only and keeps the other capabilities, without changing the layer below", () => {
    const below = new Recording();
    const ro = new ReadOnlyFilter(below);
    expect(ro.capabilities).toEqual({ ...CAPS, readOnly: true });
    expect(below.capabilities.readOnly).toBe(false);
    expect(ro.size).toBe(12345);
  });

  it("refuses write, trim and zero with EPERM and never reaches the layer below", async () => {
    const below = new Recording();
    // Typed as the interface: the overrides declare no parameters of their own.
    const ro: Backend = new ReadOnlyFilter(below);
    for (const attempt of [
      () => ro.write(Buffer.from("x"), 0, 0),
      () => ro.trim(0, 1, 0),
      () => ro.zero(0, 1, 0),
    ]) {
      const err: unknown = await attempt().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NbdRequestError);
      expect((err as NbdRequestError).errno).toBe(NBD_EPERM);
      expect((err as NbdRequestError).code).toBe("EPERM");
    }
    expect(below.calls).toEqual([]);
  });

  it("passes reads, flush, cache and block status through", async () => {
    const below = new Recording();
    const ro = new ReadOnlyFilter(below);
    const into = Buffer.alloc(2);
    await ro.read(into, 5);
    await ro.flush();
    await ro.cache(1, 2);
    expect(await ro.blockStatus(3, 4)).toBe(below.extents);
    expect(below.calls.map((c) => c[0])).toEqual(["read", "flush", "cache", "blockStatus"]);
    expect(into).toEqual(Buffer.alloc(2, 0x5a));
  });
});
