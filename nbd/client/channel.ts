// The handshake's view of the socket: bytes are pulled from the paused stream
// only when the parser needs more, so a chatty server cannot make the client
// buffer without bound before transmission starts.
import type { Duplex } from "node:stream";
import { NBD_OPT_ABORT } from "../constants.js";
import { HandshakeParser, type OptionReply } from "../codec/client-handshake.js";
import { encodeOption } from "../codec/client-options.js";
import { NbdDisconnectedError } from "./errors.js";

export class HandshakeChannel {
  readonly parser = new HandshakeParser();
  /** Set once the client is in fixed newstyle option haggling (NBD_OPT_ABORT is then valid). */
  optionHaggling = false;
  private waiter: { resolve: () => void; reject: (err: Error) => void } | undefined;
  private ended = false;
  private failure: Error | undefined;

  constructor(readonly stream: Duplex) {
    stream.on("readable", this.wake);
    stream.on("end", this.onEnd);
    stream.on("close", this.onEnd);
    stream.on("error", this.onError);
  }

  private readonly wake = (): void => {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.resolve();
  };

  private readonly onEnd = (): void => {
    this.ended = true;
    this.wake();
  };

  private readonly onError = (err: Error): void => {
    const message = `connection failed during the handshake: ${err.message}`;
    this.failure ??= new NbdDisconnectedError(message, { cause: err });
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.reject(this.failure);
  };

  /** Wait until `read` returns a message, pulling more bytes as needed. */
  async next<T>(read: () => T | undefined): Promise<T> {
    for (;;) {
      const value = read();
      if (value !== undefined) return value;
      const chunk = this.stream.read() as Buffer | null;
      if (chunk !== null) {
        this.parser.push(chunk);
        continue;
      }
      if (this.failure !== undefined) throw this.failure;
      if (this.ended) {
        throw new NbdDisconnectedError("the server closed the connection during the handshake");
      }
      await new Promise<void>((resolve, reject) => {
        this.waiter = { resolve, reject };
      });
    }
  }

  send(bytes: Buffer): void {
    this.stream.write(bytes);
  }

  /** Send an option and wait for its first reply. */
  async option(option: number, request: Buffer): Promise<OptionReply> {
    this.send(request);
    return this.reply(option);
  }

  reply(option: number): Promise<OptionReply> {
    return this.next(() => this.parser.readOptionReply(option));
  }

  /** Stop listening; returns bytes that arrived after the handshake. */
  detach(): Buffer[] {
    this.stream.off("readable", this.wake);
    this.stream.off("end", this.onEnd);
    this.stream.off("close", this.onEnd);
    this.stream.off("error", this.onError);
    const rest = this.parser.drain();
    for (;;) {
      const chunk = this.stream.read() as Buffer | null;
      if (chunk === null) return rest;
      rest.push(chunk);
    }
  }

  /**
   * End the session: a soft disconnect (NBD_OPT_ABORT) while option haggling,
   * as the spec asks of clients, unless `hard` (the server broke the protocol).
   */
  close(hard = false): void {
    this.stream.off("readable", this.wake);
    this.stream.on("error", () => undefined); // late errors are of no interest now
    if (!hard && this.optionHaggling && this.failure === undefined && !this.ended) {
      this.stream.end(encodeOption(NBD_OPT_ABORT), () => this.stream.destroy());
      setTimeout(() => this.stream.destroy(), 1000).unref();
    } else {
      this.stream.destroy();
    }
  }
}
