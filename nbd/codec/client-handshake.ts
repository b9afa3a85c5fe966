// Incremental parser for what a server sends during the handshake (spec:
// "Newstyle negotiation", "Fixed newstyle negotiation"). Push bytes as they
// arrive and ask for the message expected next; a read returns undefined until
// the whole message is there, and consumes nothing until then.
import {
  IHAVEOPT,
  NBDMAGIC,
  NBD_MAX_OPTION_LENGTH,
  NBD_OPTION_REPLY_HEADER_SIZE,
  NBD_OPT_REPLY_MAGIC,
} from "../constants.js";
import { NbdProtocolError } from "../errors.js";
import { ByteQueue, readU64 } from "./client-bytes.js";

/** The "cliserv" magic that follows NBDMAGIC in an oldstyle handshake. */
export const NBD_OLDSTYLE_MAGIC = 0x00420281861253n;

export type Greeting =
  { readonly newstyle: true; readonly handshakeFlags: number } | { readonly newstyle: false };

export interface OptionReply {
  readonly option: number;
  readonly type: number;
  readonly payload: Buffer;
}

export interface ExportNameReply {
  readonly size: number;
  readonly transmissionFlags: number;
}

const GREETING_SIZE = 18;
const EXPORT_NAME_REPLY_SIZE = 10;
const EXPORT_NAME_PADDING = 124;

export class HandshakeParser {
  private readonly queue = new ByteQueue();

  constructor(private readonly maxReplyLength = NBD_MAX_OPTION_LENGTH) {}

  push(chunk: Buffer): void {
    this.queue.push(chunk);
  }

  get buffered(): number {
    return this.queue.length;
  }

  /** S: NBDMAGIC, IHAVEOPT, 16 bits of handshake flags. */
  readGreeting(): Greeting | undefined {
    if (this.queue.length < 16) return undefined;
    const head = this.queue.peek(16);
    if (head.readBigUInt64BE(0) !== NBDMAGIC) {
      throw new NbdProtocolError("the peer is not an NBD server (no NBDMAGIC)");
    }
    const magic = head.readBigUInt64BE(8);
    if (magic === NBD_OLDSTYLE_MAGIC) {
      this.queue.skip(16);
      return { newstyle: false };
    }
    if (magic !== IHAVEOPT) {
      throw new NbdProtocolError(`unknown handshake magic 0x${magic.toString(16)}`);
    }
    if (this.queue.length < GREETING_SIZE) return undefined;
    const greeting = this.queue.take(GREETING_SIZE);
    return { newstyle: true, handshakeFlags: greeting.readUInt16BE(16) };
  }

  /**
   * S: reply magic, option, reply type, length, data. The length is checked
   * before any of the data is waited for.
   */
  readOptionReply(expectedOption: number): OptionReply | undefined {
    if (this.queue.length < NBD_OPTION_REPLY_HEADER_SIZE) return undefined;
    const header = this.queue.peek(NBD_OPTION_REPLY_HEADER_SIZE);
    if (header.readBigUInt64BE(0) !== NBD_OPT_REPLY_MAGIC) {
      throw new NbdProtocolError("bad option reply magic");
    }
    const option = header.readUInt32BE(8);
    const type = header.readUInt32BE(12);
    const length = header.readUInt32BE(16);
    if (option !== expectedOption) {
      throw new NbdProtocolError(`option reply for option ${option}, expected ${expectedOption}`);
    }
    if (length > this.maxReplyLength) {
      throw new NbdProtocolError(
        `option reply of ${length} bytes exceeds the limit of ${this.maxReplyLength}`,
      );
    }
    if (this.queue.length < NBD_OPTION_REPLY_HEADER_SIZE + length) return undefined;
    this.queue.skip(NBD_OPTION_REPLY_HEADER_SIZE);
    return { option, type, payload: this.queue.take(length) };
  }

  /**
   * S: export size, transmission flags, then 124 zero bytes unless
   * NBD_FLAG_C_NO_ZEROES was negotiated.
   */
  readExportNameReply(padded: boolean): ExportNameReply | undefined {
    const total = EXPORT_NAME_REPLY_SIZE + (padded ? EXPORT_NAME_PADDING : 0);
    if (this.queue.length < total) return undefined;
    const reply = this.queue.take(total);
    const size = readU64(reply, 0);
    if (size < 0) throw new NbdProtocolError("export size exceeds 2^53 - 1 bytes");
    return { size, transmissionFlags: reply.readUInt16BE(8) };
  }

  /** Bytes that arrived after the last message, for the transmission phase. */
  drain(): Buffer[] {
    return this.queue.drain();
  }
}
