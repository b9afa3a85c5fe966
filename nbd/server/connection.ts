// One client connection: negotiation, then transmission. Requests are
// validated once here, run concurrently against the volume, and answered as
// they complete (spec "Transmission", "Ordering of messages and writes").
import net from "node:net";
import type { Duplex } from "node:stream";
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_NAMES,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_MAX_PAYLOAD,
  NBD_REPLY_FLAG_DONE,
  NBD_SIMPLE_REPLY_SIZE,
} from "../constants.js";
import { NbdProtocolError, toNbdErrno } from "../errors.js";
import type { Export, Extent } from "../export.js";
import type { Logger } from "../logger.js";
import { ServerParser, type NbdRequest, type ServerParserSink } from "../codec/server-parser.js";
import {
  allocReadReply,
  encodeBlockStatus,
  encodeGreeting,
  encodeStructuredError,
  readReplyOverhead,
  writeSimpleReply,
} from "../codec/server-replies.js";
import { Negotiation, type NegotiationHost, type SelectedContext } from "./negotiate.js";
import type { ServedExport } from "./exports.js";
import { SocketInput } from "./socket-input.js";
import { readInto } from "../read-into.js";
import { describePeer, upgradeServer, type ServerTls, type TlsMode, type TlsPeer } from "../tls.js";

export interface ConnectionLimits {
  /** Requests in flight before the connection stops reading. */
  maxInFlight: number;
  /**
   * READ and WRITE bytes a connection holds (requests running, read replies the
   * client has not taken yet) before it stops reading.
   */
  maxInFlightBytes: number;
  /** From accepting a connection to entering transmission (TLS handshake included). */
  handshakeTimeoutMs: number;
  /** Options a client may send before transmission; past it the connection is closed. */
  maxOptions: number;
  /** How long the payload of one WRITE may take to arrive once its header has. */
  payloadTimeoutMs: number;
}

/** A limit that was reached, for the owner's log. */
export type LimitKind =
  "handshake-timeout" | "options" | "payload-timeout" | "in-flight" | "total-in-flight";

export interface ConnectionOwner {
  readonly logger: Logger;
  readonly limits: ConnectionLimits;
  readonly tls?: ServerTls;
  findExport(name: string): ServedExport | undefined;
  listExports(): readonly ServedExport[];
  closed(conn: Connection): void;
  /** Count bytes against the server-wide budget (overBudget says when it is spent). */
  reserve(bytes: number): void;
  unreserve(bytes: number): void;
  /** The server-wide budget is spent: `conn` is told (updateFlow) when it is not any more. */
  overBudget(conn: Connection): boolean;
  limitHit(kind: LimitKind, details: Record<string, unknown>): void;
}

/**
 * Simple replies of one tick are gathered in a slab and leave as one write. A region
 * handed to the socket is never written again: a full slab is replaced, and freed once
 * the socket is done with it.
 */
const REPLY_SLAB_SIZE = 1024 * NBD_SIMPLE_REPLY_SIZE;

// Servers SHOULD NOT send more than 2^20 descriptors in one chunk ("NBD_CMD_BLOCK_STATUS").
const MAX_EXTENTS_PER_CHUNK = 2 ** 20;

const FLAGS_ALLOWED: Readonly<Record<number, number>> = {
  [NBD_CMD_READ]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF,
  [NBD_CMD_WRITE]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_DISC]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_FLUSH]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_TRIM]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_CACHE]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_WRITE_ZEROES]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
  [NBD_CMD_BLOCK_STATUS]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE,
};

export class Connection implements ServerParserSink, NegotiationHost {
  private readonly parser: ServerParser;
  private readonly negotiation: Negotiation;
  private volume: Export | null = null;
  private exportName = "";
  private blockStatusOk = false;
  /** Contexts NBD_CMD_BLOCK_STATUS answers for: one chunk each. */
  private contexts: readonly SelectedContext[] = [];
  private inFlight = 0;
  private inFlightBytes = 0;
  /** Bytes of READ replies written while the socket was backed up: held until it drains. */
  private blockedBytes = 0;
  private readPaused = false;
  private options = 0;
  private transmission = false;
  private readonly acceptedAt = performance.now();
  /** requestCount of the payload being timed, and since when. */
  private payloadCount = -1;
  private payloadSince = 0;
  private writeBlocked = false;
  private corked = false;
  private replySlab = Buffer.allocUnsafe(REPLY_SLAB_SIZE);
  /** replySlab[replyStart…replyEnd): gathered replies not handed to the socket yet. */
  private replyStart = 0;
  private replyEnd = 0;
  private closing = false;
  private finished = false;
  private drainWaiters: (() => void)[] = [];
  private stream: Duplex;
  /** Where input is read to once it has its own buffers (null while reading through 'data'). */
  private input: SocketInput | null = null;
  /** Reading into own buffers was set up or found impossible for this stream. */
  private inputChosen = false;
  /** Who the TLS session authenticated; null without TLS. */
  tlsPeer: TlsPeer | null = null;

  constructor(
    stream: Duplex,
    readonly peer: string,
    private readonly owner: ConnectionOwner,
  ) {
    this.parser = new ServerParser(this);
    this.negotiation = new Negotiation(this);
    this.stream = stream;
    this.attach(stream);
    this.send(encodeGreeting());
  }

  private attach(stream: Duplex, data = true): void {
    if (data) stream.on("data", this.onData);
    stream.on("drain", this.onDrain);
    stream.on("error", this.onError);
    stream.on("close", this.onEnd);
    stream.on("end", this.onEnd);
  }

  private detach(stream: Duplex): void {
    stream.off("data", this.onData);
    stream.off("drain", this.onDrain);
    stream.off("error", this.onError);
    stream.off("close", this.onEnd);
    stream.off("end", this.onEnd);
  }

  private readonly onData = (chunk: Buffer): void => {
    this.parser.push(chunk);
    // Once in transmission (no STARTTLS can follow), read into own buffers.
    if (this.transmission && !this.inputChosen && !this.finished) {
      const arrived = this.readIntoOwnBuffers(this.stream);
      if (arrived === null) return;
      this.stream.off("data", this.onData);
      for (const c of arrived) this.parser.push(c);
    }
  };

  /**
   * Read `stream` into the connection's own buffers from now on (readInto); what had
   * arrived already comes back, to be parsed first. Null where that cannot be done:
   * 'data' goes on. Either way it is tried once per stream.
   */
  private readIntoOwnBuffers(stream: Duplex): Buffer[] | null {
    this.inputChosen = true;
    if (!(stream instanceof net.Socket)) return null;
    const input = new SocketInput(this.parser);
    const arrived = readInto(stream, input);
    if (arrived !== null) this.input = input;
    return arrived;
  }
  private readonly onDrain = (): void => {
    this.writeBlocked = false;
    if (this.blockedBytes > 0) {
      this.owner.unreserve(this.blockedBytes);
      this.blockedBytes = 0;
    }
    this.updateFlow();
  };
  private readonly onError = (err: Error): void => {
    this.owner.logger.debug({ peer: this.peer, err }, "connection error");
    this.finish();
  };
  private readonly onEnd = (): void => this.finish();

  // --- ServerParserSink ---

  onClientFlags(flags: number): void {
    this.negotiation.clientFlags(flags);
  }

  onOption(option: number, data: Buffer): void {
    if (this.tooManyOptions()) return;
    this.negotiation.option(option, data);
  }

  onOversizedOption(option: number, length: number): void {
    if (this.tooManyOptions()) return;
    this.negotiation.oversized(option, length);
  }

  private tooManyOptions(): boolean {
    const max = this.owner.limits.maxOptions;
    if (++this.options <= max) return false;
    this.owner.limitHit("options", { peer: this.peer, max });
    this.end(new NbdProtocolError(`more than ${max} options before transmission`));
    return true;
  }

  onProtocolError(error: NbdProtocolError): void {
    this.end(error);
  }

  onRequest(req: NbdRequest): void {
    if (req.type === NBD_CMD_DISC) {
      this.parser.stop();
      void this.drain().then(() => this.endStream());
      return;
    }
    const error = this.validate(req);
    if (error !== 0) {
      this.replyError(req, error, this.describeRejection(req, error));
      return;
    }
    this.inFlight++;
    const bytes = heldBytes(req);
    if (bytes > 0) {
      this.inFlightBytes += bytes;
      this.owner.reserve(bytes);
    }
    this.updateFlow();
    this.execute(req).then(
      () => this.done(req),
      (err: unknown) => {
        this.replyError(req, toNbdErrno(err), errorMessage(req, err));
        this.done(req);
      },
    );
  }

  // --- NegotiationHost ---

  findExport(name: string): ServedExport | undefined {
    return this.owner.findExport(name);
  }

  listExports(): readonly ServedExport[] {
    return this.owner.listExports();
  }

  begin(exp: ServedExport): void {
    this.volume = exp.volume;
    this.exportName = exp.name;
    const selected = this.negotiation.metaContextExport === exp.name;
    this.contexts = selected ? this.negotiation.metaContexts : [];
    this.blockStatusOk = this.contexts.length > 0;
    // Gathered, a payload holds only what arrived (execute joins it for write()).
    this.parser.gatherPayloads = true;
    this.transmission = true;
    this.parser.enterTransmission();
    this.owner.logger.debug({ peer: this.peer, export: exp.name }, "transmission");
  }

  get tlsMode(): TlsMode {
    return this.owner.tls?.mode ?? "off";
  }

  refusal(exp: ServedExport): string | undefined {
    const why = exp.authorize?.(this.tlsPeer);
    if (why !== undefined)
      this.owner.logger.warn(
        { peer: this.peer, export: exp.name, tlsPeer: describePeer(this.tlsPeer), reason: why },
        "export refused to this client",
      );
    return why;
  }

  startTls(): void {
    const tls = this.owner.tls as ServerTls;
    const raw = this.stream;
    // The ACK (sent just before) must reach the socket ahead of the first TLS
    // byte, and no input may be read as plain NBD from here on.
    this.parser.stop();
    this.detach(raw);
    if (this.corked) this.uncork();
    raw.on("error", () => undefined);
    upgradeServer(raw, tls, this.owner.limits.handshakeTimeoutMs).then(
      ({ socket, peer }) => {
        if (this.finished) {
          socket.destroy();
          return;
        }
        this.stream = socket;
        this.tlsPeer = peer;
        this.parser.resumeOptions();
        const arrived = this.readIntoOwnBuffers(socket);
        this.attach(socket, arrived === null);
        this.owner.logger.debug(
          {
            peer: this.peer,
            tls: socket.getProtocol(),
            cipher: socket.getCipher().name,
            tlsPeer: peer,
          },
          "TLS on",
        );
        for (const chunk of arrived ?? []) this.parser.push(chunk);
      },
      (err: Error) => {
        this.owner.logger.warn({ peer: this.peer, err: err.message }, "TLS handshake failed");
        raw.destroy();
        this.finish();
      },
    );
  }

  end(error?: NbdProtocolError): void {
    if (error !== undefined)
      this.owner.logger.warn({ peer: this.peer, err: error.message }, "closing connection");
    this.parser.stop();
    this.endStream();
  }

  send(buffer: Buffer): void {
    if (this.finished) return;
    this.corkForTick();
    this.flushReplies();
    if (!this.stream.write(buffer)) this.writeBlocked = true;
  }

  /** A simple reply, gathered with the others of this tick (see REPLY_SLAB_SIZE). */
  private sendSimpleReply(error: number, req: NbdRequest): void {
    if (this.finished) return;
    this.corkForTick();
    if (this.replyEnd + NBD_SIMPLE_REPLY_SIZE > this.replySlab.length) {
      this.flushReplies();
      this.replySlab = Buffer.allocUnsafe(REPLY_SLAB_SIZE);
      this.replyStart = this.replyEnd = 0;
    }
    writeSimpleReply(this.replySlab, this.replyEnd, error, req.cookieHi, req.cookieLo);
    this.replyEnd += NBD_SIMPLE_REPLY_SIZE;
  }

  /** Replies finishing in the same tick leave in one write. */
  private corkForTick(): void {
    if (this.corked) return;
    this.corked = true;
    this.stream.cork();
    setImmediate(this.uncork);
  }

  /** End our side once the gathered replies are handed to the socket. */
  private endStream(): void {
    if (!this.finished) this.flushReplies();
    this.stream.end();
  }

  private flushReplies(): void {
    if (this.replyEnd === this.replyStart) return;
    const gathered = this.replySlab.subarray(this.replyStart, this.replyEnd);
    this.replyStart = this.replyEnd;
    if (!this.stream.write(gathered)) this.writeBlocked = true;
  }

  // --- shutdown ---

  /** Stop taking requests, let those in flight finish, then close. */
  async shutdown(): Promise<void> {
    this.closing = true;
    this.parser.stop();
    this.stream.pause();
    await this.drain();
    this.endStream();
    // A client that never closes its side must not keep the process alive.
    setTimeout(() => this.stream.destroy(), 2000).unref();
  }

  /** Resolves when no request is in flight. */
  drain(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  // --- transmission ---

  private validate(req: NbdRequest): number {
    const volume = this.volume as Export;
    const allowed = FLAGS_ALLOWED[req.type];
    if (allowed === undefined) return NBD_EINVAL;
    if ((req.flags & ~allowed) !== 0) return NBD_EINVAL;
    const caps = volume.capabilities;
    if ((req.flags & NBD_CMD_FLAG_FUA) !== 0 && !caps.fua) return NBD_EINVAL;
    if ((req.flags & NBD_CMD_FLAG_DF) !== 0 && !this.negotiation.structured) return NBD_EINVAL;
    if (req.type === NBD_CMD_FLUSH) return caps.flush ? 0 : NBD_EINVAL;
    const writes =
      req.type === NBD_CMD_WRITE || req.type === NBD_CMD_TRIM || req.type === NBD_CMD_WRITE_ZEROES;
    if (writes && caps.readOnly) return NBD_EPERM;
    if (req.type === NBD_CMD_TRIM && !caps.trim) return NBD_EINVAL;
    if (req.type === NBD_CMD_WRITE_ZEROES && !caps.zero) return NBD_EINVAL;
    if ((req.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0 && !caps.fastZero) return NBD_EINVAL;
    if (req.type === NBD_CMD_BLOCK_STATUS && !this.blockStatusOk) return NBD_EINVAL;
    if (req.type === NBD_CMD_CACHE && !caps.cache) return NBD_EINVAL;
    if (req.length === 0) return NBD_EINVAL;
    if (req.offset > volume.size || req.length > volume.size - req.offset) {
      return req.type === NBD_CMD_WRITE || req.type === NBD_CMD_WRITE_ZEROES
        ? NBD_ENOSPC
        : NBD_EINVAL;
    }
    if (req.type === NBD_CMD_READ && req.length > NBD_MAX_PAYLOAD) {
      return this.negotiation.structured ? NBD_EOVERFLOW : NBD_EINVAL;
    }
    return 0;
  }

  private async execute(req: NbdRequest): Promise<void> {
    const volume = this.volume as Export;
    switch (req.type) {
      case NBD_CMD_READ: {
        const structured = this.negotiation.structured;
        const reply = allocReadReply(
          structured,
          req.cookieHi,
          req.cookieLo,
          req.offset,
          req.length,
        );
        await volume.read(reply.subarray(readReplyOverhead(structured)), req.offset);
        this.send(reply);
        return;
      }
      case NBD_CMD_WRITE:
        if (req.parts === null) await volume.write(req.payload as Buffer, req.offset, req.flags);
        else if (volume.writev !== undefined) await volume.writev(req.parts, req.offset, req.flags);
        else await volume.write(Buffer.concat(req.parts, req.length), req.offset, req.flags);
        break;
      case NBD_CMD_FLUSH:
        await volume.flush();
        break;
      case NBD_CMD_TRIM:
        await volume.trim(req.offset, req.length, req.flags);
        break;
      case NBD_CMD_WRITE_ZEROES:
        await volume.zero(req.offset, req.length, req.flags);
        break;
      case NBD_CMD_CACHE:
        await volume.cache(req.offset, req.length);
        break;
      case NBD_CMD_BLOCK_STATUS:
        return this.blockStatus(req, volume);
    }
    this.sendSimpleReply(0, req);
  }

  /**
   * One NBD_REPLY_TYPE_BLOCK_STATUS chunk per selected context, the last with
   * NBD_REPLY_FLAG_DONE. Every source answers before any chunk leaves, so a
   * failing one turns the whole request into one error reply.
   */
  private async blockStatus(req: NbdRequest, volume: Export): Promise<void> {
    const contexts = this.contexts;
    const answers = await Promise.all(
      contexts.map((c) =>
        c.source === null
          ? volume.blockStatus(req.offset, req.length)
          : c.source.blockStatus(req.offset, req.length),
      ),
    );
    const reqOne = (req.flags & NBD_CMD_FLAG_REQ_ONE) !== 0;
    for (let i = 0; i < contexts.length; i++) {
      const context = contexts[i] as SelectedContext;
      const extents = answers[i] as Extent[];
      const clipped =
        context.source === null
          ? clipExtents(extents, req.length, reqOne)
          : clipContextExtents(extents, req.length, reqOne);
      const flags = i === contexts.length - 1 ? NBD_REPLY_FLAG_DONE : 0;
      this.send(encodeBlockStatus(req.cookieHi, req.cookieLo, context.id, clipped, flags));
    }
  }

  private replyError(req: NbdRequest, error: number, message: string): void {
    this.owner.logger.debug({ peer: this.peer, error, message }, "request failed");
    if (this.negotiation.structured)
      this.send(encodeStructuredError(error, req.cookieHi, req.cookieLo, message));
    else this.sendSimpleReply(error, req);
  }

  private describeRejection(req: NbdRequest, error: number): string {
    const name = NBD_CMD_NAMES[req.type] ?? `command ${req.type}`;
    const volume = this.volume as Export;
    if (error === NBD_EPERM)
      return `${name}: export ${JSON.stringify(this.exportName)} is read-only`;
    if (
      error === NBD_ENOSPC ||
      (error === NBD_EINVAL && req.length !== 0 && req.offset + req.length > volume.size)
    )
      return `${name}: range ${req.offset}+${req.length} is beyond the export size ${volume.size}`;
    if (error === NBD_EOVERFLOW) return `${name}: length ${req.length} exceeds ${NBD_MAX_PAYLOAD}`;
    if (error === NBD_ENOTSUP) return `${name}: not supported`;
    return `${name}: invalid request (flags 0x${req.flags.toString(16)}, length ${req.length})`;
  }

  private done(req: NbdRequest): void {
    this.input?.release(req);
    this.inFlight--;
    const bytes = heldBytes(req);
    if (bytes > 0) {
      this.inFlightBytes -= bytes;
      // A read reply that went into a backed-up socket is still in memory.
      if (req.type === NBD_CMD_READ && this.writeBlocked && !this.finished)
        this.blockedBytes += bytes;
      else this.owner.unreserve(bytes);
    }
    this.updateFlow();
    if (this.inFlight === 0 && this.drainWaiters.length > 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    }
  }

  /**
   * Backpressure both ways: stop reading while replies back up, or too much is
   * in flight here or in the whole server.
   */
  updateFlow(): void {
    if (this.closing || this.finished) return;
    const limits = this.owner.limits;
    const bytesOver = this.inFlightBytes + this.blockedBytes >= limits.maxInFlightBytes;
    const over =
      this.writeBlocked ||
      this.inFlight >= limits.maxInFlight ||
      bytesOver ||
      this.owner.overBudget(this);
    if (over && !this.readPaused) {
      this.readPaused = true;
      this.parser.hold();
      this.stream.pause();
      if (bytesOver)
        this.owner.limitHit("in-flight", {
          peer: this.peer,
          bytes: this.inFlightBytes + this.blockedBytes,
          max: limits.maxInFlightBytes,
        });
    } else if (!over && this.readPaused) {
      this.readPaused = false;
      this.stream.resume();
      this.parser.release();
    }
  }

  /** The server's periodic check: a handshake or a WRITE payload that takes too long ends the connection. */
  checkDeadlines(now: number): void {
    if (this.finished) return;
    const limits = this.owner.limits;
    if (!this.transmission) {
      if (now - this.acceptedAt > limits.handshakeTimeoutMs) {
        this.owner.limitHit("handshake-timeout", {
          peer: this.peer,
          timeoutMs: limits.handshakeTimeoutMs,
        });
        this.finish();
      }
      return;
    }
    // Not while this side stopped reading: then the client is not the slow one.
    if (!this.parser.receivingPayload || this.readPaused) {
      this.payloadCount = -1;
      return;
    }
    if (this.payloadCount !== this.parser.requestCount) {
      this.payloadCount = this.parser.requestCount;
      this.payloadSince = now;
    } else if (now - this.payloadSince > limits.payloadTimeoutMs) {
      this.owner.limitHit("payload-timeout", {
        peer: this.peer,
        timeoutMs: limits.payloadTimeoutMs,
      });
      this.finish();
    }
  }

  private readonly uncork = (): void => {
    this.corked = false;
    if (!this.finished) this.flushReplies();
    this.stream.uncork();
  };

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.blockedBytes > 0) {
      this.owner.unreserve(this.blockedBytes);
      this.blockedBytes = 0;
    }
    this.parser.stop();
    this.stream.destroy();
    this.owner.closed(this);
  }
}

/** What a request holds in memory while it runs: its payload or its read buffer. */
function heldBytes(req: NbdRequest): number {
  return req.type === NBD_CMD_WRITE || req.type === NBD_CMD_READ ? req.length : 0;
}

function clipExtents<T extends { length: number; flags: number }>(
  extents: readonly T[],
  length: number,
  reqOne: boolean,
): readonly { length: number; flags: number }[] {
  const first = extents[0];
  if (first === undefined) return [{ length, flags: 0 }];
  if (reqOne) return [{ length: Math.min(first.length, length), flags: first.flags }];
  return extents.length > MAX_EXTENTS_PER_CHUNK ? extents.slice(0, MAX_EXTENTS_PER_CHUNK) : extents;
}

/**
 * A context source's extents made valid for the wire: no empty extents, none
 * past the request's end, at most MAX_EXTENTS_PER_CHUNK ("NBD_CMD_BLOCK_STATUS").
 */
function clipContextExtents(
  extents: readonly Extent[],
  length: number,
  reqOne: boolean,
): readonly Extent[] {
  const out: Extent[] = [];
  const most = reqOne ? 1 : MAX_EXTENTS_PER_CHUNK;
  let covered = 0;
  for (const e of extents) {
    if (covered >= length || out.length >= most) break;
    if (e.length <= 0) continue;
    const n = Math.min(e.length, length - covered);
    out.push({ length: n, flags: e.flags >>> 0 });
    covered += n;
  }
  return out.length > 0 ? out : [{ length, flags: 0 }];
}

function errorMessage(req: NbdRequest, err: unknown): string {
  const name = NBD_CMD_NAMES[req.type] ?? `command ${req.type}`;
  const detail = err instanceof Error ? err.message : String(err);
  return `${name} at ${req.offset}+${req.length}: ${detail}`;
}
