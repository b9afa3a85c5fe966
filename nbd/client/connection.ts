// The transmission phase on one socket: requests go out under one cork per
// tick, wait in the client when the socket's buffer is full, and are matched
// to replies by cookie in whatever order the server answers.
import type { Duplex } from "node:stream";
import {
  BASE_ALLOCATION,
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_EINVAL,
  NBD_ERROR_NAMES,
  NBD_ESHUTDOWN,
} from "../constants.js";
import { ReplyParser } from "../codec/client-replies.js";
import { RequestHeaderSlab, encodeRequest } from "../codec/client-request.js";
import { NbdProtocolError, NbdRequestError } from "../errors.js";
import { NbdDisconnectedError } from "./errors.js";
import type { NegotiatedExport } from "./handshake.js";
import { ClientRequest, InflightTable } from "./inflight.js";
import { commandName } from "./limits.js";

/** The logging the client does; a pino logger fits. */
export interface ClientLogger {
  debug(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export interface ConnectionOptions {
  readonly sendBufferBytes: number;
  readonly logger: ClientLogger;
  readonly onClose: (reason: Error | undefined) => void;
}

const OPEN = 0;
const CLOSING = 1; // no new operations; NBD_CMD_DISC once the last reply is in
const CLOSED = 2;

export class NbdConnection {
  /** Resolves when the connection is gone, with the reason (undefined after close()). */
  readonly closed: Promise<Error | undefined>;
  private readonly table = new InflightTable((request) => this.settle(request));
  private readonly parser: ReplyParser<ClientRequest>;
  private readonly headers = new RequestHeaderSlab();
  private readonly queue: (ClientRequest | undefined)[] = [];
  private queueHead = 0;
  private blocked = false;
  private corked = false;
  private state = OPEN;
  private busy = 0; // public operations in progress
  private discSent = false;
  private finished = false;
  private failure: Error | undefined;
  private shutdownReason: Error | undefined;
  private resolveClosed: (reason: Error | undefined) => void = () => undefined;

  constructor(
    private readonly socket: Duplex,
    negotiated: NegotiatedExport,
    early: Buffer[],
    private readonly options: ConnectionOptions,
  ) {
    this.parser = new ReplyParser(this.table, {
      structuredReplies: negotiated.structuredReplies,
      metaContextIds: new Set(negotiated.metaContexts.values()),
      allocationContextId: negotiated.metaContexts.get(BASE_ALLOCATION),
    });
    this.closed = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
    socket.on("data", this.onData);
    socket.on("drain", this.onDrain);
    socket.on("end", this.onEnd);
    socket.on("error", this.onError);
    socket.on("close", this.onClose);
    for (const chunk of early) this.onData(chunk);
    socket.resume();
  }

  get inFlight(): number {
    return this.table.size;
  }

  /** Start a public operation; throws once the connection is closing or gone. */
  enter(): void {
    if (this.state !== OPEN) throw this.goneError();
    this.busy++;
  }

  leave(): void {
    this.busy--;
    if (this.state === CLOSING) this.finishClosing();
  }

  /** Let operations in progress finish, send NBD_CMD_DISC, wait for the server to hang up. */
  async close(): Promise<void> {
    if (this.state === OPEN) {
      this.state = CLOSING;
      this.finishClosing();
    }
    await this.closed;
  }

  /** Hard disconnect: fail everything pending and drop the connection now. */
  destroy(reason: Error): void {
    this.fail(reason);
  }

  submit(
    command: number,
    flags: number,
    offset: number,
    length: number,
    into: Buffer | undefined,
    payload: Buffer | undefined,
  ): Promise<ClientRequest> {
    if (this.state === CLOSED) return Promise.reject(this.goneError());
    const request = new ClientRequest(command, flags, offset, length, into, payload);
    const settled = new Promise<ClientRequest>((resolve, reject) => {
      request.resolve = resolve;
      request.reject = reject;
    });
    this.table.add(request);
    if (this.blocked || this.queueHead < this.queue.length) this.queue.push(request);
    else this.transmit(request);
    return settled;
  }

  private transmit(request: ClientRequest): void {
    const socket = this.socket;
    const header = this.headers.take();
    const { flags, command, cookie, offset, length } = request;
    encodeRequest(header, 0, flags, command, cookie, offset, length);
    if (!this.corked) {
      this.corked = true;
      socket.cork();
      process.nextTick(this.uncork);
    }
    let ok = socket.write(header);
    const payload = request.payload;
    if (payload !== undefined) {
      request.payload = undefined;
      ok = socket.write(payload);
    }
    request.sent = true;
    // write() says false past the socket's small high-water mark; keep feeding
    // it up to sendBufferBytes so large writes stay pipelined, then wait for 'drain'.
    if (!ok && socket.writableLength >= this.options.sendBufferBytes) this.blocked = true;
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  private readonly onDrain = (): void => {
    this.blocked = false;
    const queue = this.queue;
    while (!this.blocked && this.queueHead < queue.length) {
      const next = queue[this.queueHead];
      queue[this.queueHead++] = undefined;
      if (next !== undefined && this.state !== CLOSED) this.transmit(next);
    }
    if (this.queueHead === queue.length) {
      queue.length = 0;
      this.queueHead = 0;
    }
  };

  private readonly onData = (chunk: Buffer): void => {
    try {
      this.parser.feed(chunk);
    } catch (err) {
      this.fail(err instanceof Error ? err : new NbdProtocolError(String(err)));
    }
  };

  private settle(request: ClientRequest): void {
    if (request.errno === 0) {
      request.resolve(request);
    } else {
      request.reject(requestError(request));
      if (request.errno === NBD_ESHUTDOWN && this.state === OPEN) {
        // The spec asks for a soft disconnect once the server says it is shutting down.
        this.options.logger.warn({}, "NBD server is shutting down; disconnecting");
        this.shutdownReason = new NbdDisconnectedError(
          "the server is shutting down (NBD_ESHUTDOWN)",
        );
        this.state = CLOSING;
      }
    }
    if (this.state === CLOSING) this.finishClosing();
  }

  private finishClosing(): void {
    if (this.state !== CLOSING || this.busy > 0 || this.table.size > 0) return;
    this.state = CLOSED;
    this.discSent = true;
    const header = this.headers.take();
    encodeRequest(header, 0, 0, NBD_CMD_DISC, this.table.takeCookie(), 0, 0);
    this.socket.end(header);
    // A server that ignores NBD_CMD_DISC does not get to keep the socket open.
    setTimeout(() => this.socket.destroy(), 5000).unref();
  }

  private readonly onEnd = (): void => {
    if (!this.discSent) this.fail(new NbdDisconnectedError("the server closed the connection"));
  };

  private readonly onError = (err: Error): void => {
    // A reset after NBD_CMD_DISC with nothing pending is just the server hanging up.
    if (this.discSent && this.table.size === 0) return;
    this.fail(err);
  };

  private readonly onClose = (): void => {
    if (this.finished) return;
    if (!this.discSent) this.fail(new NbdDisconnectedError("the connection closed"));
    this.finished = true;
    this.state = CLOSED;
    const reason = this.failure ?? this.shutdownReason;
    this.resolveClosed(reason);
    this.options.onClose(reason);
  };

  private fail(reason: Error): void {
    if (this.failure !== undefined || this.finished) return;
    this.failure = reason;
    this.state = CLOSED;
    this.options.logger.warn({ err: reason }, "NBD connection failed");
    const err =
      reason instanceof NbdProtocolError || reason instanceof NbdDisconnectedError
        ? reason
        : new NbdDisconnectedError(`the connection failed: ${reason.message}`, { cause: reason });
    this.queue.length = 0;
    this.queueHead = 0;
    this.table.failAll(err);
    this.socket.destroy();
  }

  private goneError(): NbdDisconnectedError {
    const cause = this.failure ?? this.shutdownReason;
    const why = cause === undefined ? "the client is closed" : cause.message;
    return new NbdDisconnectedError(`no new requests: ${why}`, { cause });
  }
}

function requestError(request: ClientRequest): NbdRequestError {
  const known = NBD_ERROR_NAMES[request.errno];
  // Spec: treat an unexpected error value as NBD_EINVAL.
  const errno = known === undefined ? NBD_EINVAL : request.errno;
  const name = commandName(request.command);
  const what =
    request.command === NBD_CMD_FLUSH
      ? name
      : `${name} at offset ${request.offset} length ${request.length}`;
  const error = known ?? `error ${request.errno} (taken as EINVAL)`;
  const at = request.errorOffset >= 0 ? ` at offset ${request.errorOffset}` : "";
  const detail = request.message === "" ? "" : `: ${request.message}`;
  return new NbdRequestError(errno, `${what} failed with ${error}${at}${detail}`);
}
