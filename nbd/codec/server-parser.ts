// Incremental parser for everything a client sends to a server: the client
// flags, option haggling, then transmission requests. Sans-IO: bytes go in
// through push(), parsed messages come out through the sink's methods.
import {
  IHAVEOPT,
  NBD_CMD_WRITE,
  NBD_MAX_OPTION_LENGTH,
  NBD_MAX_PAYLOAD,
  NBD_OPTION_HEADER_SIZE,
  NBD_REQUEST_MAGIC,
  NBD_REQUEST_SIZE,
} from "../constants.js";
import { NbdProtocolError } from "../errors.js";

/** One transmission request. `payload` is set for NBD_CMD_WRITE only. */
export interface NbdRequest {
  flags: number;
  type: number;
  /** The opaque 8-byte cookie, kept as two 32-bit halves to be echoed back. */
  cookieHi: number;
  cookieLo: number;
  /** Byte offset; greater than Number.MAX_SAFE_INTEGER when the wire value was. */
  offset: number;
  length: number;
  payload: Buffer | null;
  /** With gathering on, a WRITE payload that spanned chunks: views of them, in order. */
  parts: Buffer[] | null;
}

export interface ServerParserSink {
  onClientFlags(flags: number): void;
  /** An option whose data fitted the limit. */
  onOption(option: number, data: Buffer): void;
  /** An option whose data was larger than the limit: its data was skipped unread. */
  onOversizedOption(option: number, length: number): void;
  onRequest(request: NbdRequest): void;
  onProtocolError(error: NbdProtocolError): void;
}

const Phase = {
  ClientFlags: 0,
  OptionHeader: 1,
  OptionData: 2,
  OptionSkip: 3,
  RequestHeader: 4,
  Payload: 5,
  Stopped: 6,
} as const;
type Phase = (typeof Phase)[keyof typeof Phase];

const TWO_32 = 0x1_0000_0000;

export class ServerParser {
  private phase: Phase = Phase.ClientFlags;
  /** Bytes of a fixed-size header that straddled chunk boundaries. */
  private readonly scratch = Buffer.allocUnsafe(NBD_REQUEST_SIZE);
  private scratchFilled = 0;
  private option = 0;
  private optionData: Buffer = Buffer.alloc(0);
  private remaining = 0;
  private filled = 0;
  private pending: NbdRequest | null = null;
  /**
   * Hand a WRITE payload that spans chunks over as views of the chunks (`parts`)
   * instead of copying it into one buffer; for volumes that can write a vector.
   * A gathered payload holds only the bytes that arrived, not the length claimed.
   */
  gatherPayloads = false;
  /** While held, input stops at the next request boundary and waits in `held`. */
  private holding = false;
  private held: Buffer | null = null;
  /** Request headers parsed so far (a stalled payload keeps this still). */
  requestCount = 0;

  constructor(
    private readonly sink: ServerParserSink,
    private readonly maxOptionLength = NBD_MAX_OPTION_LENGTH,
    private readonly maxPayload = NBD_MAX_PAYLOAD,
  ) {}

  /** Switch to transmission: called by the sink when NBD_OPT_GO or EXPORT_NAME succeeds. */
  enterTransmission(): void {
    this.phase = Phase.RequestHeader;
  }

  /** Back to option haggling after a stop for NBD_OPT_STARTTLS: input now comes decrypted. */
  resumeOptions(): void {
    this.phase = Phase.OptionHeader;
    this.scratchFilled = 0;
  }

  /** Ignore all further input (after ABORT, DISC, STARTTLS or a protocol error). */
  stop(): void {
    this.phase = Phase.Stopped;
    this.pending = null;
    this.held = null;
  }

  get stopped(): boolean {
    return this.phase === Phase.Stopped;
  }

  /** In the middle of a WRITE payload. */
  get receivingPayload(): boolean {
    return this.phase === Phase.Payload;
  }

  /**
   * Bytes of a gathered WRITE payload still to come, 0 outside one. Chunks of
   * at most this many bytes pushed now become parts of it as they are.
   */
  get payloadRemaining(): number {
    return this.phase === Phase.Payload && this.pending?.parts != null ? this.remaining : 0;
  }

  /**
   * Stop handing out requests at the next request boundary: what follows waits
   * until release(). A chunk can hold thousands of request headers, so pausing
   * the stream alone would not stop the ones already read.
   */
  hold(): void {
    this.holding = true;
  }

  release(): void {
    this.holding = false;
    const held = this.held;
    if (held === null) return;
    this.held = null;
    this.push(held);
  }

  /**
   * `transient`: the caller writes over `chunk` once this returns, so whatever
   * is kept of it (a payload or a part of one, bytes held back) is copied.
   */
  push(chunk: Buffer, transient = false): void {
    if (this.held !== null) {
      this.held = Buffer.concat([this.held, chunk]);
      return;
    }
    let pos = 0;
    const end = chunk.length;
    while (pos < end) {
      switch (this.phase) {
        case Phase.ClientFlags:
          pos = this.fixed(chunk, pos, 4);
          if (this.scratchFilled === 4) {
            this.scratchFilled = 0;
            this.phase = Phase.OptionHeader;
            this.sink.onClientFlags(this.scratch.readUInt32BE(0));
          }
          break;
        case Phase.OptionHeader:
          pos = this.fixed(chunk, pos, NBD_OPTION_HEADER_SIZE);
          if (this.scratchFilled === NBD_OPTION_HEADER_SIZE) {
            this.scratchFilled = 0;
            this.optionHeader();
          }
          break;
        case Phase.OptionData: {
          const n = Math.min(this.remaining, end - pos);
          chunk.copy(this.optionData, this.filled, pos, pos + n);
          pos += n;
          this.filled += n;
          this.remaining -= n;
          if (this.remaining === 0) {
            this.phase = Phase.OptionHeader;
            this.sink.onOption(this.option, this.optionData);
          }
          break;
        }
        case Phase.OptionSkip: {
          const n = Math.min(this.remaining, end - pos);
          pos += n;
          this.remaining -= n;
          if (this.remaining === 0) {
            this.phase = Phase.OptionHeader;
            this.sink.onOversizedOption(this.option, this.filled);
          }
          break;
        }
        case Phase.RequestHeader:
          if (this.holding && this.scratchFilled === 0) {
            this.held = keep(chunk.subarray(pos), transient);
            return;
          }
          if (this.scratchFilled === 0 && end - pos >= NBD_REQUEST_SIZE) {
            this.request(chunk, pos);
            pos += NBD_REQUEST_SIZE;
          } else {
            pos = this.fixed(chunk, pos, NBD_REQUEST_SIZE);
            if (this.scratchFilled === NBD_REQUEST_SIZE) {
              this.scratchFilled = 0;
              this.request(this.scratch, 0);
            }
          }
          if ((this.phase as Phase) === Phase.Payload) {
            const request = this.pending as NbdRequest;
            if (end - pos >= this.remaining) {
              // The whole payload is in this chunk: hand out a view (a copy if transient).
              request.payload = keep(chunk.subarray(pos, pos + this.remaining), transient);
              pos += this.remaining;
              this.finishPayload();
            } else if (this.gatherPayloads) {
              request.parts = [];
            } else {
              request.payload = Buffer.allocUnsafe(this.remaining);
            }
          }
          break;
        case Phase.Payload: {
          const request = this.pending as NbdRequest;
          const n = Math.min(this.remaining, end - pos);
          if (request.parts !== null)
            request.parts.push(keep(chunk.subarray(pos, pos + n), transient));
          else chunk.copy(request.payload as Buffer, this.filled, pos, pos + n);
          pos += n;
          this.filled += n;
          this.remaining -= n;
          if (this.remaining === 0) this.finishPayload();
          break;
        }
        case Phase.Stopped:
          return;
      }
    }
  }

  /** Accumulate up to `size` bytes of a fixed header into the scratch buffer. */
  private fixed(chunk: Buffer, pos: number, size: number): number {
    const n = Math.min(size - this.scratchFilled, chunk.length - pos);
    chunk.copy(this.scratch, this.scratchFilled, pos, pos + n);
    this.scratchFilled += n;
    return pos + n;
  }

  private optionHeader(): void {
    const s = this.scratch;
    if (s.readBigUInt64BE(0) !== IHAVEOPT) {
      this.fail("option request without IHAVEOPT magic");
      return;
    }
    this.option = s.readUInt32BE(8);
    const length = s.readUInt32BE(12);
    if (length > this.maxOptionLength) {
      this.phase = Phase.OptionSkip;
      this.remaining = length;
      this.filled = length;
      return;
    }
    if (length === 0) {
      this.sink.onOption(this.option, Buffer.alloc(0));
      return;
    }
    this.optionData = Buffer.allocUnsafe(length);
    this.filled = 0;
    this.remaining = length;
    this.phase = Phase.OptionData;
  }

  private request(buf: Buffer, at: number): void {
    if (buf.readUInt32BE(at) !== NBD_REQUEST_MAGIC) {
      this.fail(`bad request magic 0x${buf.readUInt32BE(at).toString(16)}`);
      return;
    }
    const flags = buf.readUInt16BE(at + 4);
    const type = buf.readUInt16BE(at + 6);
    const offset = buf.readUInt32BE(at + 16) * TWO_32 + buf.readUInt32BE(at + 20);
    const length = buf.readUInt32BE(at + 24);
    this.requestCount++;
    const request: NbdRequest = {
      flags,
      type,
      cookieHi: buf.readUInt32BE(at + 8),
      cookieLo: buf.readUInt32BE(at + 12),
      offset,
      length,
      payload: null,
      parts: null,
    };
    if (type !== NBD_CMD_WRITE || length === 0) {
      this.sink.onRequest(request);
      return;
    }
    // The limit is checked before any allocation (spec "Size constraints": a
    // payload over 32 MiB may be treated as a denial of service).
    if (length > this.maxPayload) {
      this.fail(`NBD_CMD_WRITE payload of ${length} bytes exceeds the ${this.maxPayload} limit`);
      return;
    }
    this.pending = request;
    this.remaining = length;
    this.filled = 0;
    this.phase = Phase.Payload;
  }

  private finishPayload(): void {
    const request = this.pending as NbdRequest;
    this.pending = null;
    this.phase = Phase.RequestHeader;
    this.filled = 0;
    this.remaining = 0;
    this.sink.onRequest(request);
  }

  private fail(message: string): void {
    this.stop();
    this.sink.onProtocolError(new NbdProtocolError(message));
  }
}

/** A view of a chunk the parser keeps, copied when the chunk is reused after push(). */
function keep(view: Buffer, transient: boolean): Buffer {
  return transient ? Buffer.from(view) : view;
}
