import type { Duplex } from "node:stream";
import { listen, type Endpoint, type Listener } from "../transport.js";
import { silentLogger, type Logger } from "../logger.js";
import {
  Connection,
  type ConnectionLimits,
  type ConnectionOwner,
  type LimitKind,
} from "./connection.js";
import type { ServedExport } from "./exports.js";
import type { ServerTls } from "../tls.js";

export interface ServerLimits extends ConnectionLimits {
  /** Connections at once; more are closed as they arrive. */
  maxConnections: number;
  /** READ and WRITE bytes held by all connections together before they all stop reading. */
  maxTotalInFlightBytes: number;
}

export interface NbdServerOptions {
  exports: readonly ServedExport[];
  logger?: Logger;
  limits?: Partial<ServerLimits>;
  /** Offer NBD_OPT_STARTTLS ("on") or insist on it ("require"); none: no TLS. */
  tls?: ServerTls;
}

export const DEFAULT_LIMITS: ServerLimits = {
  maxInFlight: 256,
  maxInFlightBytes: 128 * 1024 * 1024,
  // As qemu-nbd's --handshake-limit.
  handshakeTimeoutMs: 10_000,
  maxOptions: 256,
  payloadTimeoutMs: 60_000,
  maxConnections: 128,
  maxTotalInFlightBytes: 1024 * 1024 * 1024,
};

/** A limit reached again within this long is counted, not logged again. */
const LIMIT_LOG_INTERVAL_MS = 10_000;

/** Serves a fixed set of exports to any number of connections. */
export class NbdServer implements ConnectionOwner {
  readonly logger: Logger;
  readonly limits: ServerLimits;
  readonly tls: ServerTls | undefined;
  private readonly exports: Map<string, ServedExport>;
  private readonly connections = new Set<Connection>();
  private readonly listeners: Listener[] = [];
  private totalBytes = 0;
  /** Connections that stopped reading for the server-wide budget. */
  private readonly waiting = new Set<Connection>();
  private sweeper: NodeJS.Timeout | undefined;
  /** Per limit: when it was last logged, and how often it was hit since. */
  private readonly limitLog = new Map<LimitKind | "connections", { at: number; since: number }>();
  /** How often each limit was reached (for status and tests). */
  readonly limitHits: Record<LimitKind | "connections", number> = {
    connections: 0,
    "handshake-timeout": 0,
    options: 0,
    "payload-timeout": 0,
    "in-flight": 0,
    "total-in-flight": 0,
  };

  constructor(options: NbdServerOptions) {
    this.logger = options.logger ?? silentLogger;
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.tls = options.tls;
    this.exports = new Map(options.exports.map((e) => [e.name, e]));
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** READ and WRITE bytes all connections hold now. */
  get inFlightBytes(): number {
    return this.totalBytes;
  }

  async listen(endpoint: Endpoint): Promise<Listener> {
    const listener = await listen(endpoint, (stream, peer) => this.accept(stream, peer));
    this.listeners.push(listener);
    return listener;
  }

  /** Serve a connection that was accepted elsewhere; past --max-connections it is closed. */
  accept(stream: Duplex, peer: string): Connection | undefined {
    if (this.connections.size >= this.limits.maxConnections) {
      this.limitHit("connections", { peer, max: this.limits.maxConnections });
      stream.on("error", () => undefined);
      stream.destroy();
      return undefined;
    }
    const conn = new Connection(stream, peer, this);
    this.connections.add(conn);
    this.logger.debug({ peer }, "connection opened");
    this.startSweeper();
    return conn;
  }

  /** One timer for every connection's deadlines (handshake, WRITE payload). */
  private startSweeper(): void {
    if (this.sweeper !== undefined) return;
    const shortest = Math.min(this.limits.handshakeTimeoutMs, this.limits.payloadTimeoutMs);
    const every = Math.max(20, Math.min(1000, Math.floor(shortest / 4)));
    this.sweeper = setInterval(() => {
      const now = performance.now();
      for (const c of this.connections) c.checkDeadlines(now);
      if (this.connections.size === 0) {
        clearInterval(this.sweeper);
        this.sweeper = undefined;
      }
    }, every);
    this.sweeper.unref();
  }

  reserve(bytes: number): void {
    this.totalBytes += bytes;
  }

  unreserve(bytes: number): void {
    this.totalBytes -= bytes;
    if (this.waiting.size > 0 && this.totalBytes < this.limits.maxTotalInFlightBytes) {
      const waiting = [...this.waiting];
      this.waiting.clear();
      for (const c of waiting) c.updateFlow();
    }
  }

  overBudget(conn: Connection): boolean {
    if (this.totalBytes < this.limits.maxTotalInFlightBytes) return false;
    if (!this.waiting.has(conn)) {
      this.waiting.add(conn);
      this.limitHit("total-in-flight", {
        bytes: this.totalBytes,
        max: this.limits.maxTotalInFlightBytes,
      });
    }
    return true;
  }

  /** Log a limit reached, at most once per LIMIT_LOG_INTERVAL_MS each, with the count between. */
  limitHit(kind: LimitKind | "connections", details: Record<string, unknown>): void {
    this.limitHits[kind]++;
    const now = performance.now();
    const last = this.limitLog.get(kind);
    if (last !== undefined && now - last.at < LIMIT_LOG_INTERVAL_MS) {
      last.since++;
      return;
    }
    this.limitLog.set(kind, { at: now, since: 0 });
    const fields = { limit: kind, ...details, alsoSinceLastLog: last?.since ?? 0 };
    // Flow control under load is normal; a closed connection is worth a warning.
    if (kind === "in-flight" || kind === "total-in-flight")
      this.logger.info(fields, LIMIT_MESSAGES[kind]);
    else this.logger.warn(fields, LIMIT_MESSAGES[kind]);
  }

  findExport(name: string): ServedExport | undefined {
    return this.exports.get(name);
  }

  listExports(): readonly ServedExport[] {
    return [...this.exports.values()];
  }

  closed(conn: Connection): void {
    this.waiting.delete(conn);
    if (this.connections.delete(conn)) this.logger.debug({ peer: conn.peer }, "connection closed");
  }

  /** Stop listening, let requests in flight finish, and close every connection. */
  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.sweeper = undefined;
    await Promise.all(this.listeners.splice(0).map((l) => l.close()));
    await Promise.all([...this.connections].map((c) => c.shutdown()));
  }
}

const LIMIT_MESSAGES: Record<LimitKind | "connections", string> = {
  connections: "limit reached: too many connections, closing the new one (--max-connections)",
  "handshake-timeout":
    "limit reached: the client did not finish the handshake in time, closing (--handshake-timeout)",
  options: "limit reached: too many options before transmission, closing (--max-options)",
  "payload-timeout":
    "limit reached: a WRITE payload did not arrive in time, closing (--payload-timeout)",
  "in-flight":
    "limit reached: a connection holds its most bytes in flight; it reads again as they complete (--max-in-flight)",
  "total-in-flight":
    "limit reached: the server holds its most bytes in flight; connections read again as they complete (--max-total-in-flight)",
};
