// The primary's pool for gathered payloads: sizes, reuse, the cap on what it keeps.
import { describe, expect, it } from "vitest";
import { PayloadPool } from "../../src/mirror/payload-pool.js";

describe("PayloadPool", () => {
  it("hands out power-of-two buffers of at least the length, from 4 KiB up", () => {
    const pool = new PayloadPool();
    expect(pool.acquire(1).length).toBe(4096);
    expect(pool.acquire(4096).length).toBe(4096);
    expect(pool.acquire(4097).length).toBe(8192);
    expect(pool.acquire(1024 * 1024).length).toBe(1024 * 1024);
    expect(pool.acquire(1024 * 1024 + 28).length).toBe(2 * 1024 * 1024);
    expect(pool.inUse).toBe(5);
  });

  it("gives a released buffer out again for the same size class, never twice at once", () => {
    const pool = new PayloadPool();
    const a = pool.acquire(65536);
    pool.release(a);
    expect(pool.pooledBytes).toBe(65536);
    const b = pool.acquire(40000);
    expect(b).toBe(a);
    const c = pool.acquire(40000);
    expect(c).not.toBe(a);
    expect(pool.inUse).toBe(2);
    expect(pool.pooledBytes).toBe(0);
  });

  it("keeps no more than its cap for reuse", () => {
    const pool = new PayloadPool(128 * 1024);
    const held = [1, 2, 3].map(() => pool.acquire(65536));
    for (const b of held) pool.release(b);
    expect(pool.pooledBytes).toBe(128 * 1024);
    expect(pool.inUse).toBe(0);
  });

  it("gathers parts in order", () => {
    const pool = new PayloadPool();
    const parts = [Buffer.from("abc"), Buffer.from(""), Buffer.from("defgh")];
    const into = pool.gather(parts, 8);
    expect(into.subarray(0, 8).toString()).toBe("abcdefgh");
  });
});
