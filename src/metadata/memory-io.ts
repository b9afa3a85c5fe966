// A metadata file in memory that remembers which writes are durable, so tests
// and fault experiments can build what a crash would leave: everything synced,
// plus any subset of the later writes, one of them possibly torn.
import type { MetaIo } from "./types.js";

export type IoOp =
  | { readonly kind: "write"; readonly offset: number; readonly length: number }
  | { readonly kind: "sync" };

interface Unsynced {
  readonly offset: number;
  readonly data: Buffer;
}

function apply(into: Buffer, offset: number, data: Buffer): Buffer {
  const end = offset + data.length;
  const out = end > into.length ? Buffer.concat([into, Buffer.alloc(end - into.length)]) : into;
  data.copy(out, offset);
  return out;
}

export class MemoryMetaIo implements MetaIo {
  private durable: Buffer;
  private current: Buffer;
  private unsynced: Unsynced[] = [];
  readonly ops: IoOp[] = [];
  /** Called before each write or sync; throwing makes the operation fail unapplied. */
  before: ((op: IoOp, step: number, data?: Buffer) => void) | undefined;

  constructor(image: Buffer = Buffer.alloc(0)) {
    this.durable = Buffer.from(image);
    this.current = Buffer.from(image);
  }

  read(buf: Buffer, offset: number): Promise<number> {
    const n = Math.max(0, Math.min(buf.length, this.current.length - offset));
    this.current.copy(buf, 0, offset, offset + n);
    return Promise.resolve(n);
  }

  write(buf: Buffer, offset: number): Promise<void> {
    const op: IoOp = { kind: "write", offset, length: buf.length };
    try {
      this.before?.(op, this.ops.length, buf);
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    this.ops.push(op);
    const data = Buffer.from(buf);
    this.unsynced.push({ offset, data });
    this.current = apply(this.current, offset, data);
    return Promise.resolve();
  }

  sync(): Promise<void> {
    const op: IoOp = { kind: "sync" };
    try {
      this.before?.(op, this.ops.length);
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    this.ops.push(op);
    for (const u of this.unsynced) this.durable = apply(this.durable, u.offset, u.data);
    this.unsynced = [];
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  /** Everything written so far, as reads see it. */
  image(): Buffer {
    return Buffer.from(this.current);
  }

  get unsyncedWrites(): number {
    return this.unsynced.length;
  }

  /**
   * What a crash now would leave: the synced image plus the unsynced writes
   * for which `keep(i)` is true (in write order), and, if given, the first
   * `torn.bytes` bytes of a write that was under way.
   */
  survivor(
    keep: (i: number) => boolean,
    torn?: { offset: number; data: Buffer; bytes: number },
  ): Buffer {
    let out: Buffer = Buffer.from(this.durable);
    this.unsynced.forEach((u, i) => {
      if (keep(i)) out = apply(out, u.offset, u.data);
    });
    if (torn !== undefined) out = apply(out, torn.offset, torn.data.subarray(0, torn.bytes));
    return out;
  }
}
