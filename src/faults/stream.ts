// The link emulator's stream: sits between the link's NBD client and its real
// socket, so every emulated fault is a real event to the client. Bytes in
// both directions go through a delay line (latency, jitter, bandwidth,
// stalls); a disconnect destroys the real socket; an error reply is a simple
// reply with NBD_EIO in the reply stream, for a write request that is taken
// out of the request stream, as a far end that failed the write would send.
import { Duplex } from "node:stream";
import {
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_EIO,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
} from "../../nbd/constants.js";
import { DelayLine } from "./delay-line.js";
import type { LinkShape } from "./settings.js";

const REQUEST_HEADER = 28;
const SIMPLE_REPLY_HEADER = 16;
const STRUCTURED_REPLY_HEADER = 20;
/** Bytes a direction may hold before its writer waits. */
const HIGH_WATER = 4 * 1024 * 1024;

export interface EmulatedStreamHooks {
  shape: () => LinkShape;
  /** Whether the far end should fail this write with NBD_EIO. */
  failWrite: (offset: number, length: number) => boolean;
  now: () => number;
}

export class EmulatedStream extends Duplex {
  private readonly out: DelayLine;
  private readonly in: DelayLine;
  /** Requests and replies are parsed once the handshake is over. */
  private transmission = false;
  private structured = false;
  /** The protocol was not what this parser expects: bytes pass, no errors are injected. */
  private lost = false;
  // Request parsing.
  private readonly reqHeader = Buffer.alloc(REQUEST_HEADER);
  private reqHave = 0;
  private reqSkip = 0;
  private reqDrop = false;
  // Reply parsing: where the next reply starts, so injected replies go between replies.
  private readonly repHeader = Buffer.alloc(STRUCTURED_REPLY_HEADER);
  private repHave = 0;
  private repNeed = 0;
  private repSkip = 0;
  private readonly pendingReplies: Buffer[] = [];
  /** Simple replies to NBD_CMD_READ carry the read's length, known only from its request. */
  private readonly readLengths = new Map<bigint, number>();
  private writeCallback: (() => void) | undefined;
  private ending: (() => void) | undefined;
  private socketEnded = false;

  constructor(
    private readonly socket: Duplex,
    private readonly hooks: EmulatedStreamHooks,
  ) {
    super({ allowHalfOpen: false });
    const toSocket = {
      deliver: (bytes: Buffer, injected: boolean) => this.toSocket(bytes, injected),
      batch: (start: boolean) => (start ? socket.cork() : socket.uncork()),
    };
    const toClient = {
      deliver: (bytes: Buffer) => this.toClient(bytes),
      batch: () => undefined,
    };
    this.out = new DelayLine(hooks.shape, toSocket, hooks.now);
    this.in = new DelayLine(hooks.shape, toClient, hooks.now);
    socket.on("data", (chunk: Buffer) => this.fromSocket(chunk));
    socket.on("drain", () => this.out.resume());
    socket.on("end", () => this.endWhenDelivered());
    socket.on("error", (err: Error) => this.destroy(err));
    socket.on("close", () => this.destroy());
  }

  /** The handshake is over: parse requests and replies from here on. */
  startTransmission(structuredReplies: boolean): void {
    this.transmission = true;
    this.structured = structuredReplies;
  }

  /** A stall: the line is frozen; look again when it thaws. */
  frozen(): void {
    this.out.reschedule();
    this.in.reschedule();
  }

  /** Close the connection as a network failure would. */
  disconnect(reason: string): void {
    this.socket.destroy(Object.assign(new Error(reason), { code: "ECONNRESET" }));
  }

  // --- from the client to the secondary ---

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: () => void): void {
    this.takeRequestBytes(chunk);
    this.afterWrite(callback);
  }

  override _writev(chunks: { chunk: Buffer }[], callback: () => void): void {
    // The client corked these together: they stay together on the socket when not delayed.
    this.socket.cork();
    for (const c of chunks) this.takeRequestBytes(c.chunk);
    this.socket.uncork();
    this.afterWrite(callback);
  }

  override _final(callback: () => void): void {
    this.ending = callback;
    if (this.out.empty) this.finishEnd();
  }

  private finishEnd(): void {
    const callback = this.ending;
    this.ending = undefined;
    this.socket.end();
    callback?.();
  }

  private afterWrite(callback: () => void): void {
    if (this.out.bytes < HIGH_WATER) return callback();
    this.writeCallback = callback;
  }

  private takeRequestBytes(chunk: Buffer): void {
    if (!this.transmission || this.lost) return this.out.push(chunk);
    let at = 0;
    let from = 0; // start of the bytes of this chunk not yet forwarded
    const forward = (end: number): void => {
      if (end > from) this.out.push(chunk.subarray(from, end));
      from = end;
    };
    while (at < chunk.length) {
      if (this.reqSkip > 0) {
        const n = Math.min(this.reqSkip, chunk.length - at);
        if (this.reqDrop) {
          forward(at);
          from = at + n;
        }
        at += n;
        this.reqSkip -= n;
        continue;
      }
      if (this.reqHave === 0 && chunk.length - at >= REQUEST_HEADER) {
        forward(at);
        chunk.copy(this.reqHeader, 0, at, at + REQUEST_HEADER);
        const drop = this.onRequest();
        if (drop === undefined) break;
        at += REQUEST_HEADER;
        if (drop) from = at;
        continue;
      }
      // A header split across chunks is held back until it is whole: it may be dropped.
      forward(at);
      const n = Math.min(REQUEST_HEADER - this.reqHave, chunk.length - at);
      chunk.copy(this.reqHeader, this.reqHave, at, at + n);
      this.reqHave += n;
      at += n;
      from = at;
      if (this.reqHave < REQUEST_HEADER) break;
      this.reqHave = 0;
      const drop = this.onRequest();
      if (drop !== true) this.out.push(Buffer.from(this.reqHeader));
      if (drop === undefined) break;
    }
    forward(chunk.length);
  }

  /** A whole request header: true to drop it (and its payload); undefined if it is not one. */
  private onRequest(): boolean | undefined {
    const h = this.reqHeader;
    if (h.readUInt32BE(0) !== NBD_REQUEST_MAGIC) {
      this.lost = true;
      return undefined;
    }
    const type = h.readUInt16BE(6);
    const offset = Number(h.readBigUInt64BE(16));
    const length = h.readUInt32BE(24);
    if (type === NBD_CMD_READ && !this.structured)
      this.readLengths.set(h.readBigUInt64BE(8), length);
    if (type !== NBD_CMD_WRITE) {
      this.reqDrop = false;
      return false;
    }
    this.reqSkip = length;
    this.reqDrop = this.hooks.failWrite(offset, length);
    if (this.reqDrop) {
      // The far end's answer: travels the way back after the request would have arrived.
      const reply = Buffer.alloc(SIMPLE_REPLY_HEADER);
      reply.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
      reply.writeUInt32BE(NBD_EIO, 4);
      h.copy(reply, 8, 8, 16);
      this.out.push(reply, true);
    }
    return this.reqDrop;
  }

  private toSocket(bytes: Buffer, injected: boolean): boolean {
    const ok = injected ? (this.injectReply(bytes), true) : this.socket.write(bytes);
    if (this.out.bytes < HIGH_WATER) {
      const cb = this.writeCallback;
      this.writeCallback = undefined;
      cb?.();
    }
    if (this.out.empty && this.ending !== undefined) this.finishEnd();
    return ok;
  }

  // --- from the secondary to the client ---

  private injectReply(reply: Buffer): void {
    const between = this.repNeed === 0 && this.repSkip === 0 && this.repHave === 0;
    if (this.lost || between) this.in.push(reply);
    else this.pendingReplies.push(reply);
  }

  private fromSocket(chunk: Buffer): void {
    if (!this.transmission || this.lost) this.in.push(chunk);
    else this.frameReplies(chunk);
    if (this.in.bytes >= HIGH_WATER) this.socket.pause();
  }

  /** Finds where replies end, so injected replies go in between whole replies. */
  private frameReplies(chunk: Buffer): void {
    let at = 0;
    let from = 0;
    while (at < chunk.length) {
      if (this.repSkip > 0) {
        const n = Math.min(this.repSkip, chunk.length - at);
        at += n;
        this.repSkip -= n;
      } else {
        if (this.repHave === 0) this.repNeed = 4;
        const n = Math.min(this.repNeed - this.repHave, chunk.length - at);
        chunk.copy(this.repHeader, this.repHave, at, at + n);
        this.repHave += n;
        at += n;
        if (this.repHave < this.repNeed) break;
        if (this.repNeed === 4) {
          const magic = this.repHeader.readUInt32BE(0);
          if (magic === NBD_SIMPLE_REPLY_MAGIC) this.repNeed = SIMPLE_REPLY_HEADER;
          else if (magic === NBD_STRUCTURED_REPLY_MAGIC) this.repNeed = STRUCTURED_REPLY_HEADER;
          else {
            this.lost = true;
            break;
          }
          continue;
        }
        this.repSkip = this.replyPayload();
        this.repHave = 0;
        this.repNeed = 0;
      }
      if (this.repSkip === 0 && this.repHave === 0 && this.pendingReplies.length > 0) {
        this.in.push(chunk.subarray(from, at));
        from = at;
        for (const r of this.pendingReplies) this.in.push(r);
        this.pendingReplies.length = 0;
      }
    }
    if (chunk.length > from) this.in.push(chunk.subarray(from));
    if (this.lost) {
      for (const r of this.pendingReplies) this.in.push(r);
      this.pendingReplies.length = 0;
    }
  }

  private replyPayload(): number {
    const h = this.repHeader;
    if (this.repNeed === STRUCTURED_REPLY_HEADER) return h.readUInt32BE(16);
    const cookie = h.readBigUInt64BE(8);
    const length = this.readLengths.get(cookie);
    if (length === undefined) return 0;
    this.readLengths.delete(cookie);
    return h.readUInt32BE(4) === 0 ? length : 0;
  }

  private toClient(bytes: Buffer): boolean {
    const ok = this.push(bytes);
    if (this.in.bytes < HIGH_WATER) this.socket.resume();
    if (this.in.empty && this.socketEnded) this.push(null);
    return ok;
  }

  override _read(): void {
    this.in.resume();
  }

  private endWhenDelivered(): void {
    this.socketEnded = true;
    if (this.in.empty) this.push(null);
  }

  override _destroy(err: Error | null, callback: (err: Error | null) => void): void {
    this.out.close();
    this.in.close();
    this.socket.destroy();
    callback(err);
  }
}
