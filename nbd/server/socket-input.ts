// Where a connection's input is read to (readInto): requests, options and
// small payloads into one input buffer that is reused after every read, the
// parser copying what it keeps of it; the bulk of a large WRITE payload
// straight into pieces of its own, reused once the request is done. Without
// this, every read (every 16 KiB record on TLS) is a fresh buffer, and large
// writes allocate their size again and again: memory that lives until the
// write is on the volume, is promoted out of V8's young generation and makes
// full garbage collections frequent. On a plain socket a piece is also one
// read of up to its size, where 'data' reads 64 KiB at a time.
import type { NbdRequest, ServerParser } from "../codec/server-parser.js";
import type { ReadTarget } from "../read-into.js";

/** Reused for everything but the pieces (a TLS record holds at most 16 KiB). */
const INPUT_SIZE = 64 * 1024;
/** A payload piece; one at a time is filled ahead of the bytes arriving. */
export const PIECE_SIZE = 256 * 1024;
/** A payload gets pieces while at least this much of it is still to come. */
const PIECE_MIN = 64 * 1024;
/** Pieces kept for reuse; more go to the garbage collector. */
const FREE_MAX = 32;

export class SocketInput implements ReadTarget {
  private readonly input = Buffer.allocUnsafe(INPUT_SIZE);
  /** The piece being filled, up to pieceEnd (never past the payload's end). */
  private piece: Buffer | null = null;
  private pieceUsed = 0;
  private pieceEnd = 0;
  private readonly free: Buffer[] = [];
  /** Pieces handed to the parser, found again through their parts. */
  private readonly pieces = new WeakSet<ArrayBufferLike>();

  constructor(private readonly parser: ServerParser) {}

  next(): Buffer {
    const piece = this.piece;
    if (piece !== null) return piece.subarray(this.pieceUsed, this.pieceEnd);
    const rest = this.parser.payloadRemaining;
    if (rest < PIECE_MIN) return this.input;
    const fresh = this.free.pop() ?? Buffer.allocUnsafeSlow(PIECE_SIZE);
    this.piece = fresh;
    this.pieceUsed = 0;
    this.pieceEnd = Math.min(rest, PIECE_SIZE);
    return fresh.subarray(0, this.pieceEnd);
  }

  got(n: number): void {
    const piece = this.piece;
    if (piece === null) {
      this.parser.push(this.input.subarray(0, n), true);
      return;
    }
    this.pieceUsed += n;
    if (this.pieceUsed < this.pieceEnd) return;
    // Full: the parser takes it whole as the payload's next part.
    this.piece = null;
    this.pieces.add(piece.buffer);
    this.parser.push(piece.subarray(0, this.pieceEnd));
  }

  /** `req` is done with its payload (the volume borrows parts until its write settles). */
  release(req: NbdRequest): void {
    const parts = req.parts;
    if (parts === null) return;
    for (const part of parts) {
      if (!this.pieces.delete(part.buffer)) continue;
      if (this.free.length < FREE_MAX) this.free.push(Buffer.from(part.buffer));
    }
  }
}
