import type { Duplex } from "node:stream";
import { listen, type Endpoint, type Listener } from "../transport.js";
import { silentLogger, type Logger } from "../logger.js";
import { Connection, type ConnectionLimits, type ConnectionOwner } from "./connection.js";
import type { ServedExport } from "./exports.js";
import type { ServerTls } from "../tls.js";

export interface NbdServerOptions {
  exports: readonly ServedExport[];
  logger?: Logger;
  limits?: Partial<ConnectionLimits>;
  /** Offer NBD_OPT_STARTTLS ("on") or insist on it ("require"); none: no TLS. */
  tls?: ServerTls;
}

const DEFAULT_LIMITS: ConnectionLimits = {
  maxInFlight: 256,
  maxInFlightBytes: 128 * 1024 * 1024,
  handshakeTimeoutMs: 30_000,
};

/** Serves a fixed set of exports to any number of connections. */
export class NbdServer implements ConnectionOwner {
  readonly logger: Logger;
  readonly limits: ConnectionLimits;
  readonly tls: ServerTls | undefined;
  private readonly exports: Map<string, ServedExport>;
  private readonly connections = new Set<Connection>();
  private readonly listeners: Listener[] = [];

  constructor(options: NbdServerOptions) {
    this.logger = options.logger ?? silentLogger;
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.tls = options.tls;
    this.exports = new Map(options.exports.map((e) => [e.name, e]));
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  async listen(endpoint: Endpoint): Promise<Listener> {
    const listener = await listen(endpoint, (stream, peer) => this.accept(stream, peer));
    this.listeners.push(listener);
    return listener;
  }

  /** Serve a connection that was accepted elsewhere. */
  accept(stream: Duplex, peer: string): Connection {
    const conn = new Connection(stream, peer, this);
    this.connections.add(conn);
    this.logger.debug({ peer }, "connection opened");
    return conn;
  }

  findExport(name: string): ServedExport | undefined {
    return this.exports.get(name);
  }

  listExports(): readonly ServedExport[] {
    return [...this.exports.values()];
  }

  closed(conn: Connection): void {
    if (this.connections.delete(conn)) this.logger.debug({ peer: conn.peer }, "connection closed");
  }

  /** Stop listening, let requests in flight finish, and close every connection. */
  async close(): Promise<void> {
    await Promise.all(this.listeners.splice(0).map((l) => l.close()));
    await Promise.all([...this.connections].map((c) => c.shutdown()));
  }
}
