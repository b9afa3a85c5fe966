// The admin API: GET /status (JSON), GET /metrics (Prometheus text), and POST
// actions. Bound to loopback by default. Actions need the admin token (auth.ts),
// reads too unless they come from loopback; HTTPS with a certificate directory.
import http from "node:http";
import https from "node:https";
import { once } from "node:events";
import { Gauge, Registry } from "prom-client";
import type { Logger } from "../../nbd/logger.js";
import type { Dashboard } from "./dashboard.js";
import {
  bearerMatches,
  generateAdminToken,
  isLoopback,
  removeGeneratedToken,
  type AdminToken,
} from "./auth.js";

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
    if (this.token?.generated === true) await removeGeneratedToken(this.token.file);
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
    const known = Object.keys(this.options.actions);
    const action = req.method === "POST" ? this.options.actions[path.slice(1)] : undefined;
    if (action === undefined) {
      const method = req.method ?? "?";
      if (known.includes(path.slice(1)))
        return reply(res, 405, { error: `${path} takes POST, not ${method}: POST ${path}` });
      if ((GETS.includes(path) || path.startsWith("/dashboard/")) && method !== "GET")
        return reply(res, 405, { error: `${path} takes GET, not ${method}: GET ${path}` });
      return reply(res, 404, {
        error: `no such endpoint: ${method} ${path}; this ${roleOf(this.options.status)} serves GET / (the dashboard), GET /status, GET /metrics${known.map((a) => `, POST /${a}`).join("")}`,
      });
    }
    let body: Record<string, unknown> = {};
    let text: string;
    try {
      text = await readBody(req);
    } catch (err) {
      return reply(res, 413, { error: (err as Error).message });
    }
    if (text.trim() !== "") {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (err) {
        return reply(res, 400, {
          error: `the request body is not JSON (${(err as Error).message}); send a JSON object, e.g. {"rate": 104857600}, or nothing`,
        });
      }
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
        return reply(res, 400, {
          error: `the request body must be a JSON object of settings, not ${Array.isArray(parsed) ? "an array" : JSON.stringify(parsed)}`,
        });
      body = parsed as Record<string, unknown>;
    }
    try {
      const result = await action(body);
      this.options.logger.info({ action: path.slice(1), body }, "admin action");
      reply(res, 200, result ?? { ok: true });
    } catch (err) {
      // A setting that does not parse is the request's fault; anything else, the state's.
      reply(res, (err as Error).name === "UsageError" ? 400 : 409, {
        error: (err as Error).message,
      });
    }
  }

  /**
   * Every number (and boolean) in the status becomes a gauge named after its
   * path; the pair state, the suspend reason, the role and the mode become labels
   * of info gauges. A figure
   * the status no longer gives (null now, e.g. an ETA once the resync ends)
   * leaves the output instead of keeping its last value.
   */
  private refreshMetrics(): void {
    const seen = new Set<string>();
    const set = (name: string, value: number, labels?: Record<string, string>): void => {
      seen.add(name);
      const g = this.gauge(name, labels === undefined ? [] : Object.keys(labels));
      if (labels === undefined) g.set(value);
      else {
        g.reset();
        g.set(labels, value);
      }
    };
    const visit = (prefix: string, value: unknown): void => {
      if (typeof value === "number") set(prefix, value);
      else if (typeof value === "boolean") set(prefix, value ? 1 : 0);
      else if (typeof value === "object" && value !== null && !Array.isArray(value))
        for (const [k, v] of Object.entries(value)) visit(`${prefix}_${snake(k)}`, v);
    };
    const status = this.options.status();
    visit("peercopy", status);
    const state = status.pairState;
    if (typeof state === "string") set("peercopy_pair_state_info", 1, { state });
    if (typeof status.suspendReason === "string")
      set("peercopy_suspend_reason_info", 1, { reason: status.suspendReason });
    const role = typeof status.role === "string" ? status.role : "controller";
    set("peercopy_info", 1, { role, mode: typeof status.mode === "string" ? status.mode : "" });
    for (const name of [...this.gauges.keys()])
      if (!seen.has(name)) {
        this.registry.removeSingleMetric(name);
        this.gauges.delete(name);
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

/** The GET endpoints besides the dashboard's. */
const GETS = ["/", "/status", "/metrics"];

function roleOf(status: () => Record<string, unknown>): string {
  try {
    const role = status().role;
    return typeof role === "string" ? role : "controller";
  } catch {
    return "controller";
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
    if (text.length > 65536)
      throw new Error("the request body is over 64 KiB; the settings fit in a few hundred bytes");
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
