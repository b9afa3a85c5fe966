// The admin API: GET /status (JSON), GET /metrics (Prometheus text), and POST
// actions. Bound to loopback by default. Actions need the admin token (auth.ts),
// reads too unless they come from loopback; HTTPS with a certificate directory.
import http from "node:http";
import https from "node:https";
import { once } from "node:events";
import { rm } from "node:fs/promises";
import { Gauge, Registry } from "prom-client";
import type { Logger } from "../../nbd/logger.js";
import type { Dashboard } from "./dashboard.js";
import { bearerMatches, generateAdminToken, isLoopback, type AdminToken } from "./auth.js";

export type Action = (body: Record<string, unknown>) => unknown;

export interface AdminOptions {
  host: string;
  port: number;
  status: () => Record<string, unknown>;
  actions: Readonly<Record<string, Action>>;
  logger: Logger;
  /** The live page at GET / and its data under /dashboard/ (src/admin/dashboard.ts). */
  dashboard?: Dashboard | undefined;
  /** The operator's token (--admin-token-file); without one, a random one is written in tokenDir. */
  token?: AdminToken;
  /** Where a generated token goes (see defaultTokenFile). */
  tokenDir?: string;
  /** HTTPS with this certificate and key (PEM); plain HTTP without. */
  tls?: { readonly cert: Buffer; readonly key: Buffer };
}

/** How long a client may take to send a request's headers, and all of it. */
const HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 30_000;
/** Admin clients are a few tools and people: more connections than this wait. */
const MAX_CONNECTIONS = 64;

export class AdminServer {
  private readonly server: http.Server;
  private readonly registry = new Registry();
  private readonly gauges = new Map<string, Gauge>();
  /** Set once listening (a generated token needs the port). */
  token: AdminToken | undefined;

  constructor(private readonly options: AdminOptions) {
    const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
      this.handle(req, res).catch((err: unknown) =>
        reply(res, 500, { error: (err as Error).message }),
      );
    };
    this.server =
      options.tls === undefined
        ? http.createServer(handler)
        : https.createServer(
            { cert: options.tls.cert, key: options.tls.key, minVersion: "TLSv1.2" },
            handler,
          );
    this.server.headersTimeout = HEADERS_TIMEOUT_MS;
    this.server.requestTimeout = REQUEST_TIMEOUT_MS;
    this.server.maxConnections = MAX_CONNECTIONS;
    this.token = options.token;
  }

  get scheme(): "http" | "https" {
    return this.options.tls === undefined ? "http" : "https";
  }

  async listen(): Promise<{ host: string; port: number }> {
    this.server.listen(this.options.port, this.options.host);
    await Promise.race([
      once(this.server, "listening"),
      once(this.server, "error").then(([e]) => Promise.reject(e as Error)),
    ]);
    const address = this.server.address();
    const port = typeof address === "object" && address !== null ? address.port : this.options.port;
    if (this.token === undefined) {
      const dir = this.options.tokenDir;
      if (dir === undefined) throw new Error("the admin API needs a token or a tokenDir");
      this.token = await generateAdminToken(dir, this.options.host, port);
    }
    return { host: this.options.host, port };
  }

  async close(): Promise<void> {
    this.options.dashboard?.stop();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    if (this.token?.generated === true) await rm(this.token.file, { force: true });
  }

  /** Why this request may not go on (401), or undefined. */
  private refusal(req: http.IncomingMessage): string | undefined {
    const read = req.method === "GET" || req.method === "HEAD";
    if (read && isLoopback(req.socket.remoteAddress)) return undefined;
    const token = this.token?.value;
    const header = req.headers.authorization;
    if (token !== undefined && bearerMatches(header, token)) return undefined;
    const what = read ? "reads from off this host" : "actions";
    return header === undefined
      ? `${what} need the admin token: send "Authorization: Bearer TOKEN" (peercopy commands: --admin-token-file FILE)`
      : "the admin token is wrong";
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://admin");
    const path = url.pathname.replace(/\/+$/, "") || "/";
    const refused = this.refusal(req);
    if (refused !== undefined) {
      this.options.logger.warn(
        { from: req.socket.remoteAddress, method: req.method, path, reason: refused },
        "admin request refused",
      );
      req.resume();
      res.setHeader("www-authenticate", 'Bearer realm="peercopy"');
      return reply(res, 401, { error: refused });
    }
    if (req.method === "GET" && this.options.dashboard?.serve(path, url, res) === true) return;
    if (req.method === "GET" && path === "/status") return reply(res, 200, this.options.status());
    if (req.method === "GET" && path === "/metrics") {
      this.refreshMetrics();
      res.writeHead(200, { "content-type": this.registry.contentType });
      res.end(await this.registry.metrics());
      return;
    }
    const action = req.method === "POST" ? this.options.actions[path.slice(1)] : undefined;
    if (action === undefined) {
      const known = Object.keys(this.options.actions).map((a) => `POST /${a}`);
      return reply(res, 404, {
        error: `no such endpoint: ${req.method ?? "?"} ${path}; try GET / (the dashboard), GET /status, GET /metrics, ${known.join(", ")}`,
      });
    }
    let body: Record<string, unknown> = {};
    const text = await readBody(req);
    if (text.trim() !== "") {
      try {
        body = JSON.parse(text) as Record<string, unknown>;
      } catch {
        return reply(res, 400, { error: "the request body must be JSON" });
      }
    }
    try {
      const result = await action(body);
      this.options.logger.info({ action: path.slice(1), body }, "admin action");
      reply(res, 200, result ?? { ok: true });
    } catch (err) {
      reply(res, 409, { error: (err as Error).message });
    }
  }

  /** Every number in the status becomes a gauge named after its path; strings become labels. */
  private refreshMetrics(): void {
    const visit = (prefix: string, value: unknown): void => {
      if (typeof value === "number") this.gauge(prefix).set(value);
      else if (typeof value === "boolean") this.gauge(prefix).set(value ? 1 : 0);
      else if (typeof value === "object" && value !== null && !Array.isArray(value))
        for (const [k, v] of Object.entries(value)) visit(`${prefix}_${snake(k)}`, v);
    };
    const status = this.options.status();
    visit("peercopy", status);
    const state = status.pairState;
    if (typeof state === "string") {
      const g = this.gauge("peercopy_pair_state_info", ["state"]);
      g.reset();
      g.set({ state }, 1);
    }
  }

  private gauge(name: string, labelNames: string[] = []): Gauge {
    let g = this.gauges.get(name);
    if (g === undefined) {
      g = new Gauge({
        name,
        help: name.replace(/_/g, " "),
        labelNames,
        registers: [this.registry],
      });
      this.gauges.set(name, g);
    }
    return g;
  }
}

function snake(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toLowerCase();
}

function reply(res: http.ServerResponse, code: number, body: unknown): void {
  res.writeHead(code, { "content-type": "application/json" });
  res.end(`${JSON.stringify(body, null, 2)}\n`);
}

async function readBody(req: http.IncomingMessage): Promise<string> {
  let text = "";
  for await (const chunk of req) {
    text += String(chunk);
    if (text.length > 65536) throw new Error("request body too large");
  }
  return text;
}

/** Starts an admin API and logs its status URL; returns it with the URL. */
export async function startAdmin(
  options: AdminOptions,
): Promise<{ server: AdminServer; statusUrl: string; base: string }> {
  const server = new AdminServer(options);
  const bound = await server.listen();
  const host = bound.host.includes(":") ? `[${bound.host}]` : bound.host;
  const base = `${server.scheme}://${host}:${bound.port}`;
  options.logger.info(
    { status: `${base}/status`, tokenFile: server.token?.file, tls: options.tls !== undefined },
    "admin API",
  );
  return { server, statusUrl: `${base}/status`, base };
}
