// An NBD client that is also an Export, so a remote server can be used
// wherever a local volume can. Requests are pipelined on one connection (see
// connection.ts); this file holds what the Export contract needs on top:
// argument checks, splitting to the server's limits, and emulation of what
// the server lacks (FUA through FLUSH, WRITE_ZEROES through WRITE).
import { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";
import {
  BASE_ALLOCATION,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_ENOTSUP,
} from "../constants.js";
import { NbdProtocolError, NbdRequestError } from "../errors.js";
import type { BlockSizeConstraints, Export, ExportCapabilities, Extent } from "../export.js";
import { connect, formatEndpoint, type Endpoint } from "../transport.js";
import { parseNbdUri } from "../uri.js";
import { clientTlsSpecFromParams, loadClientTls, upgradeClient, type ClientTls } from "../tls.js";
import { HandshakeChannel } from "./channel.js";
import { NbdConnection, type ClientLogger } from "./connection.js";
import { NbdDisconnectedError } from "./errors.js";
import { negotiate, type NegotiatedExport } from "./handshake.js";
import type { ClientRequest } from "./inflight.js";
import {
  MAX_EFFECT_LENGTH,
  capabilitiesFrom,
  checkFlags,
  checkRange,
  maxPayloadPiece,
  unsupported,
} from "./limits.js";

export type { ClientLogger } from "./connection.js";

export interface NbdClientOptions {
  readonly endpoint: Endpoint;
  readonly exportName?: string;
  /** Limit for connecting plus the handshake. Default 10 s. */
  readonly timeoutMs?: number;
  /** Negotiate structured replies (and base:allocation). Default true. */
  readonly structuredReplies?: boolean;
  /** Negotiate base:allocation for blockStatus(). Default true. */
  readonly blockStatus?: boolean;
  /** Further metadata contexts (e.g. "qemu:dirty-bitmap:b0") for blockStatusOf(). */
  readonly metaContexts?: readonly string[];
  /** Do TLS (NBD_OPT_STARTTLS first; the session ends if the server refuses it). */
  readonly tls?: ClientTls;
  /** Bytes the socket may hold unsent before requests wait in the client. Default 1 MiB. */
  readonly sendBufferBytes?: number;
  readonly logger?: ClientLogger;
}

type ClientEvents = {
  /** The connection is gone; `reason` is undefined after a clean close(). */
  close: [reason: Error | undefined];
};

const ZERO_BUFFER_SIZE = 1024 * 1024;
let zeroBuffer: Buffer | undefined;

/** `n` zero bytes from one shared buffer that nobody writes to. */
function zeroes(n: number): Buffer {
  zeroBuffer ??= Buffer.alloc(ZERO_BUFFER_SIZE);
  return zeroBuffer.subarray(0, n);
}
const silent: ClientLogger = { debug: () => undefined, warn: () => undefined };

export class NbdClient extends EventEmitter<ClientEvents> implements Export {
  readonly exportName: string;
  readonly size: number;
  readonly transmissionFlags: number;
  readonly structuredReplies: boolean;
  readonly metaContexts: ReadonlyMap<string, number>;
  readonly capabilities: ExportCapabilities;
  readonly blockSizes: BlockSizeConstraints | undefined;
  /** Everything the handshake established. */
  readonly negotiated: NegotiatedExport;
  /** Resolves when the connection is gone, with the reason (undefined after close()). */
  readonly closed: Promise<Error | undefined>;
  private readonly connection: NbdConnection;
  private readonly minimum: number;
  private readonly maxPiece: number;

  static async connect(options: NbdClientOptions): Promise<NbdClient> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    const stream = await connect(options.endpoint, timeoutMs);
    return NbdClient.handshake(stream, { ...options, timeoutMs: deadline - Date.now() });
  }

  /** Run the handshake over a stream that is already connected (a socket, or a test double). */
  static async handshake(
    stream: Duplex,
    options: Omit<NbdClientOptions, "endpoint"> & { readonly endpoint?: Endpoint },
  ): Promise<NbdClient> {
    const timeoutMs = Math.max(1, options.timeoutMs ?? 10_000);
    let channel = new HandshakeChannel(stream);
    const tls = options.tls;
    const startTls =
      tls === undefined
        ? undefined
        : async (plain: HandshakeChannel): Promise<HandshakeChannel> => {
            if (plain.detach().length > 0)
              throw new NbdProtocolError(
                "the server sent data after NBD_REP_ACK for NBD_OPT_STARTTLS",
              );
            channel = new HandshakeChannel(await upgradeClient(plain.stream, tls));
            return channel;
          };
    const timer = setTimeout(() => {
      const where =
        options.endpoint === undefined ? "" : ` with ${formatEndpoint(options.endpoint)}`;
      const err = new Error(`NBD handshake${where} timed out after ${timeoutMs} ms`);
      stream.destroy(Object.assign(err, { code: "ETIMEDOUT" }));
    }, timeoutMs);
    try {
      const negotiated = await negotiate(channel, {
        exportName: options.exportName ?? "",
        structuredReplies: options.structuredReplies,
        blockStatus: options.blockStatus,
        metaContexts: options.metaContexts,
        startTls,
      });
      return new NbdClient(channel.stream, negotiated, channel.detach(), options);
    } catch (err) {
      channel.close(err instanceof NbdProtocolError);
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  private constructor(
    socket: Duplex,
    negotiated: NegotiatedExport,
    early: Buffer[],
    options: Omit<NbdClientOptions, "endpoint">,
  ) {
    super();
    this.negotiated = negotiated;
    this.exportName = negotiated.exportName;
    this.size = negotiated.size;
    this.transmissionFlags = negotiated.transmissionFlags;
    this.structuredReplies = negotiated.structuredReplies;
    this.metaContexts = negotiated.metaContexts;
    this.blockSizes = negotiated.blockSizes;
    const allocation = negotiated.metaContexts.has(BASE_ALLOCATION);
    this.capabilities = capabilitiesFrom(negotiated.transmissionFlags, allocation);
    this.minimum = negotiated.blockSizes?.minimum ?? 1;
    this.maxPiece = maxPayloadPiece(negotiated.blockSizes);
    const logger = options.logger ?? silent;
    this.connection = new NbdConnection(socket, negotiated, early, {
      sendBufferBytes: options.sendBufferBytes ?? 1024 * 1024,
      logger,
      onClose: (reason) => this.emit("close", reason),
    });
    this.closed = this.connection.closed;
    const contexts = [...negotiated.metaContexts.keys()];
    logger.debug({ ...negotiated, metaContexts: contexts }, "NBD client connected");
  }

  /** Requests sent or queued whose replies have not arrived yet. */
  get inFlight(): number {
    return this.connection.inFlight;
  }

  /** Reads split into pieces of at most the server's maximum payload. */
  async read(into: Buffer, offset: number): Promise<void> {
    checkRange(NBD_CMD_READ, offset, into.length, this.size, this.minimum);
    this.connection.enter();
    try {
      await this.pieces(NBD_CMD_READ, 0, offset, into.length, into, this.maxPiece);
    } finally {
      this.connection.leave();
    }
  }

  /** `data` must not change until the promise settles: it is sent without copying. */
  async write(data: Buffer, offset: number, flags = 0): Promise<void> {
    checkFlags(NBD_CMD_WRITE, flags, NBD_CMD_FLAG_FUA);
    checkRange(NBD_CMD_WRITE, offset, data.length, this.size, this.minimum);
    this.connection.enter();
    try {
      await this.pieces(
        NBD_CMD_WRITE,
        this.wireFua(flags),
        offset,
        data.length,
        data,
        this.maxPiece,
      );
      await this.emulateFua(flags);
    } finally {
      this.connection.leave();
    }
  }

  async flush(): Promise<void> {
    if (!this.capabilities.flush) throw unsupported(NBD_CMD_FLUSH, "NBD_FLAG_SEND_FLUSH");
    this.connection.enter();
    try {
      await this.send(NBD_CMD_FLUSH, 0, 0, 0);
    } finally {
      this.connection.leave();
    }
  }

  async trim(offset: number, length: number, flags = 0): Promise<void> {
    checkFlags(NBD_CMD_TRIM, flags, NBD_CMD_FLAG_FUA);
    if (!this.capabilities.trim) throw unsupported(NBD_CMD_TRIM, "NBD_FLAG_SEND_TRIM");
    checkRange(NBD_CMD_TRIM, offset, length, this.size, this.minimum);
    this.connection.enter();
    try {
      await this.pieces(
        NBD_CMD_TRIM,
        this.wireFua(flags),
        offset,
        length,
        undefined,
        MAX_EFFECT_LENGTH,
      );
      await this.emulateFua(flags);
    } finally {
      this.connection.leave();
    }
  }

  /**
   * NBD_CMD_WRITE_ZEROES. Without server support the zeroes are written with
   * NBD_CMD_WRITE instead, unless NBD_CMD_FLAG_FAST_ZERO asks for a fast
   * answer, which is then NBD_ENOTSUP as the spec prescribes.
   */
  async zero(offset: number, length: number, flags = 0): Promise<void> {
    const allowed = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    checkFlags(NBD_CMD_WRITE_ZEROES, flags, allowed);
    checkRange(NBD_CMD_WRITE_ZEROES, offset, length, this.size, this.minimum);
    const fast = (flags & NBD_CMD_FLAG_FAST_ZERO) !== 0;
    if (fast && !this.capabilities.fastZero) {
      throw new NbdRequestError(
        NBD_ENOTSUP,
        "the server cannot promise a fast NBD_CMD_WRITE_ZEROES",
      );
    }
    this.connection.enter();
    try {
      const wire = this.wireFua(flags);
      if (this.capabilities.zero) {
        await this.pieces(NBD_CMD_WRITE_ZEROES, wire, offset, length, undefined, MAX_EFFECT_LENGTH);
      } else {
        // NO_HOLE is implied: written zeroes are allocated.
        const writeFlags = wire & NBD_CMD_FLAG_FUA;
        const step = Math.min(this.maxPiece, ZERO_BUFFER_SIZE);
        const writes: Promise<ClientRequest>[] = [];
        for (let done = 0; done < length; done += step) {
          const n = Math.min(step, length - done);
          writes.push(this.send(NBD_CMD_WRITE, writeFlags, offset + done, n, zeroes(n)));
        }
        await Promise.all(writes);
      }
      await this.emulateFua(flags);
    } finally {
      this.connection.leave();
    }
  }

  async cache(offset: number, length: number): Promise<void> {
    if (!this.capabilities.cache) throw unsupported(NBD_CMD_CACHE, "NBD_FLAG_SEND_CACHE");
    checkRange(NBD_CMD_CACHE, offset, length, this.size, this.minimum);
    this.connection.enter();
    try {
      await this.pieces(NBD_CMD_CACHE, 0, offset, length, undefined, MAX_EFFECT_LENGTH);
    } finally {
      this.connection.leave();
    }
  }

  /** base:allocation extents from `offset`, clipped to the range; possibly fewer than asked. */
  async blockStatus(offset: number, length: number, flags = 0): Promise<Extent[]> {
    checkFlags(NBD_CMD_BLOCK_STATUS, flags, NBD_CMD_FLAG_REQ_ONE);
    if (!this.capabilities.blockStatus) {
      throw new NbdRequestError(NBD_ENOTSUP, "the server did not agree to base:allocation");
    }
    return this.contextStatus(BASE_ALLOCATION, offset, length, flags);
  }

  /**
   * Extents of the negotiated metadata context `context` (see the metaContexts
   * option) from `offset`, clipped to the range; possibly fewer than asked.
   * Their flags are that context's own bits.
   */
  async blockStatusOf(
    context: string,
    offset: number,
    length: number,
    flags = 0,
  ): Promise<Extent[]> {
    checkFlags(NBD_CMD_BLOCK_STATUS, flags, NBD_CMD_FLAG_REQ_ONE);
    if (!this.metaContexts.has(context)) {
      throw new NbdRequestError(
        NBD_ENOTSUP,
        `the server did not grant metadata context ${JSON.stringify(context)}`,
      );
    }
    return this.contextStatus(context, offset, length, flags);
  }

  private async contextStatus(
    context: string,
    offset: number,
    length: number,
    flags: number,
  ): Promise<Extent[]> {
    checkRange(NBD_CMD_BLOCK_STATUS, offset, length, this.size, this.minimum);
    if (length === 0) return [];
    const id = this.metaContexts.get(context);
    this.connection.enter();
    try {
      const ask = Math.min(length, MAX_EFFECT_LENGTH);
      const reply = await this.send(NBD_CMD_BLOCK_STATUS, flags, offset, ask);
      const extents: Extent[] = [];
      let covered = 0;
      for (const extent of (id === undefined ? undefined : reply.contextExtents?.get(id)) ?? []) {
        if (covered >= length) break;
        const n = Math.min(extent.length, length - covered);
        extents.push({ length: n, flags: extent.flags });
        covered += n;
      }
      return extents;
    } finally {
      this.connection.leave();
    }
  }

  /** Let requests in flight finish, send NBD_CMD_DISC, and wait for the server to hang up. */
  close(): Promise<void> {
    return this.connection.close();
  }

  /** Hard disconnect: fail everything pending and drop the connection now. */
  destroy(reason?: Error): void {
    this.connection.destroy(
      reason ?? new NbdDisconnectedError("the connection was destroyed by its owner"),
    );
  }

  private wireFua(flags: number): number {
    return this.capabilities.fua ? flags : flags & ~NBD_CMD_FLAG_FUA;
  }

  // FUA without NBD_FLAG_SEND_FUA: a FLUSH after the write gives the same guarantee.
  private async emulateFua(flags: number): Promise<void> {
    if ((flags & NBD_CMD_FLAG_FUA) === 0 || this.capabilities.fua) return;
    if (this.capabilities.flush) await this.send(NBD_CMD_FLUSH, 0, 0, 0);
  }

  private send(
    command: number,
    flags: number,
    offset: number,
    length: number,
    data?: Buffer,
  ): Promise<ClientRequest> {
    return command === NBD_CMD_READ
      ? this.connection.submit(command, flags, offset, length, data, undefined)
      : this.connection.submit(command, flags, offset, length, undefined, data);
  }

  /** Send one request per `piece` bytes, all in flight at once. */
  private pieces(
    command: number,
    flags: number,
    offset: number,
    length: number,
    data: Buffer | undefined,
    piece: number,
  ): Promise<unknown> {
    if (length <= piece) {
      return length === 0 ? Promise.resolve() : this.send(command, flags, offset, length, data);
    }
    const all: Promise<ClientRequest>[] = [];
    for (let done = 0; done < length; done += piece) {
      const n = Math.min(piece, length - done);
      all.push(this.send(command, flags, offset + done, n, data?.subarray(done, done + n)));
    }
    return Promise.all(all);
  }
}

/** Connect to an NBD URI such as nbd://127.0.0.1:10809/disk or nbd+unix:///disk?socket=/run/nbd.sock. */
export async function connectUri(
  uri: string,
  options: Omit<NbdClientOptions, "endpoint" | "exportName"> = {},
): Promise<NbdClient> {
  const parsed = parseNbdUri(uri, { allowTls: true });
  const { endpoint, exportName } = parsed;
  const tls = parsed.tls ? await clientTlsFromUri(parsed) : undefined;
  return NbdClient.connect({ ...options, endpoint, exportName, tls });
}

/** The TLS an nbds:// URI asks for, with its files read (libnbd's parameters and userinfo). */
export function clientTlsFromUri(uri: ReturnType<typeof parseNbdUri>): Promise<ClientTls> {
  const spec = clientTlsSpecFromParams(uri.params);
  return loadClientTls(
    { ...spec, username: spec.username ?? uri.username },
    uri.endpoint.kind === "tcp" ? uri.endpoint.host : undefined,
  );
}
