// Byte helpers shared by the client codec. 64-bit fields are read as two
// 32-bit halves so offsets stay plain numbers (no BigInt on the hot path).

const TWO_32 = 0x1_0000_0000;
// Largest high half for which hi * 2^32 + lo stays a safe integer.
const MAX_SAFE_HIGH = 0x1f_ffff;

/** The big-endian u64 at `at`, or -1 when it exceeds Number.MAX_SAFE_INTEGER. */
export function readU64(buf: Buffer, at: number): number {
  const hi = buf.readUInt32BE(at);
  if (hi > MAX_SAFE_HIGH) return -1;
  return hi * TWO_32 + buf.readUInt32BE(at + 4);
}

/** Write a non-negative safe integer as a big-endian u64. */
export function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

/**
 * Bytes received but not yet consumed, for the handshake parser. Chunks are
 * kept as they arrive; `take` copies out only what a message needs.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // bytes of chunks[0] already consumed
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** The first `n` bytes without consuming them (n <= length). */
  peek(n: number): Buffer {
    const first = this.chunks[0];
    if (first !== undefined && first.length - this.head >= n) {
      return first.subarray(this.head, this.head + n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let skip = this.head;
    for (const chunk of this.chunks) {
      if (filled === n) break;
      const copied = chunk.copy(out, filled, skip, Math.min(chunk.length, skip + n - filled));
      filled += copied;
      skip = 0;
    }
    return out;
  }

  /** Consume and return the first `n` bytes (n <= length). */
  take(n: number): Buffer {
    const out = this.peek(n);
    this.skip(n);
    return out;
  }

  skip(n: number): void {
    this.total -= n;
    while (n > 0) {
      const first = this.chunks[0];
      if (first === undefined) return;
      const available = first.length - this.head;
      if (available > n) {
        this.head += n;
        return;
      }
      n -= available;
      this.chunks.shift();
      this.head = 0;
    }
  }

  /** Everything left, for handing over to the transmission-phase parser. */
  drain(): Buffer[] {
    const rest = this.chunks;
    if (rest[0] !== undefined) rest[0] = rest[0].subarray(this.head);
    this.chunks = [];
    this.head = 0;
    this.total = 0;
    return rest;
  }
}
