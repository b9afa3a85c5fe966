// Reusable memory for host payloads the primary holds until the secondary has
// them. A payload that arrived in several socket chunks is gathered into one of
// these instead of a fresh buffer per write: fresh buffers that live as long as a
// round trip to the secondary are promoted out of V8's young generation, and
// their memory then forces a full garbage collection every few tens of
// milliseconds under large sequential writes.

/** Smallest buffer handed out; smaller payloads get one this size. */
const MIN_CLASS_BITS = 12; // 4 KiB
/** Largest pooled buffer (the NBD payload limit); larger requests get a buffer of their own. */
const MAX_CLASS_BITS = 25; // 32 MiB

export class PayloadPool {
  /** Free buffers per size class (index: log2 of the size − MIN_CLASS_BITS). */
  private readonly free: Buffer[][] = [];
  private freeBytes = 0;
  /** Buffers handed out and not given back (for tests and status). */
  inUse = 0;

  /** @param maxFreeBytes  memory kept for reuse; buffers given back beyond it are left to the GC */
  constructor(private readonly maxFreeBytes = 16 * 1024 * 1024) {
    for (let bits = MIN_CLASS_BITS; bits <= MAX_CLASS_BITS; bits++) this.free.push([]);
  }

  /** A buffer of at least `length` bytes (its size is a power of two); give it back with release(). */
  acquire(length: number): Buffer {
    this.inUse++;
    const bits = classBits(length);
    if (bits > MAX_CLASS_BITS) return Buffer.allocUnsafeSlow(length);
    const list = this.free[bits - MIN_CLASS_BITS] as Buffer[];
    const reused = list.pop();
    if (reused === undefined) return Buffer.allocUnsafeSlow(2 ** bits);
    this.freeBytes -= reused.length;
    return reused;
  }

  /** `buffer` came from acquire() and nothing reads or writes it any more. */
  release(buffer: Buffer): void {
    this.inUse--;
    const bits = classBits(buffer.length);
    if (bits > MAX_CLASS_BITS || buffer.length !== 2 ** bits) return;
    if (this.freeBytes + buffer.length > this.maxFreeBytes) return;
    (this.free[bits - MIN_CLASS_BITS] as Buffer[]).push(buffer);
    this.freeBytes += buffer.length;
  }

  /** Bytes held for reuse. */
  get pooledBytes(): number {
    return this.freeBytes;
  }

  /** The parts, in order, copied into one pooled buffer; returns that buffer (longer than the parts). */
  gather(parts: readonly Buffer[], length: number): Buffer {
    const into = this.acquire(length);
    let at = 0;
    for (const part of parts) at += part.copy(into, at);
    return into;
  }
}

function classBits(length: number): number {
  return Math.max(MIN_CLASS_BITS, Math.ceil(Math.log2(Math.max(1, length))));
}
