// Commands that talk to a running controller's admin API.
import http from "node:http";
import https from "node:https";
import { existsSync } from "node:fs";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { defaultTokenFile, readTokenFile } from "../admin/auth.js";
import { readPem } from "../../nbd/tls.js";
import { tokenDir } from "./admin-options.js";
import { asUsage, waitForSignal } from "./common.js";
import { oneOf, parseDuration, parseListen, parseSize, UsageError } from "./args.js";
import { watch } from "./watch.js";
import { formatStatus } from "./status-text.js";
import { DISK_SET_HELP, DISK_SET_OPTIONS, diskSetBody } from "./disk-options.js";
import { LINK_SET_HELP, LINK_SET_OPTIONS, linkSetBody } from "./link-options.js";

const COMMON = {
  admin: { type: "string" },
  "admin-token-file": { type: "string" },
  "admin-tls-certificates": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const satisfies ParseArgsConfig["options"];

const COMMON_HELP = `  --admin HOST:PORT        the controller's admin API (default 127.0.0.1:10819)
  --admin-token-file FILE  the token actions need: the file the controller was
                           given, by default the one it wrote for HOST:PORT
  --admin-tls-certificates DIR
                           HTTPS, checking the server against DIR/ca-cert.pem
`;

type Values = Record<string, string | boolean | undefined>;

interface Verb {
  /** Extra options after --admin, as shown in --help. */
  readonly usage: string;
  /** More lines for --help. */
  readonly help?: string;
  readonly method: "GET" | "POST";
  /** The admin API path; default "/" and the verb. */
  readonly path?: string;
  readonly options?: ParseArgsConfig["options"];
  /** The JSON body of the POST, from the parsed options. */
  readonly body?: (values: Values) => Record<string, unknown>;
  /** After the reply was printed: follow up (e.g. wait for the end); returns the exit code. */
  readonly then?: (admin: AdminTarget, values: Values) => Promise<number>;
  /** How the reply is printed; default pretty JSON. */
  readonly print?: (reply: unknown, values: Values) => string;
  /** The role whose admin port serves it (default primary); status is served by both. */
  readonly on?: "primary" | "secondary" | "both";
}

function rateOption(text: string, flag: string): number {
  const bare = text.replace(/\/s$/, "");
  return bare === "0" ? 0 : parseSize(bare, flag);
}

const VERBS: Readonly<Record<string, Verb>> = {
  status: {
    usage: " [--json] [--watch [--interval 1s]]",
    help: "  a few lines for a person by default (coloured on a terminal unless NO_COLOR is set);\n  --json prints GET /status as it is\n",
    method: "GET",
    on: "both",
    options: {
      json: { type: "boolean" },
      watch: { type: "boolean", short: "w" },
      interval: { type: "string" },
    },
    print: (reply, v) =>
      v.json === true
        ? `${JSON.stringify(reply, null, 2)}\n`
        : formatStatus(reply as Record<string, unknown>, {
            color: process.stdout.isTTY === true && process.env.NO_COLOR === undefined,
          }),
  },
  suspend: { usage: "", method: "POST" },
  resume: { usage: "", method: "POST" },
  promote: {
    usage: " [--force]   (on a secondary's admin port)",
    method: "POST",
    on: "secondary",
    options: { force: { type: "boolean" } },
    body: (v) => ({ force: v.force === true }),
  },
  demote: {
    usage: " [--timeout 30s]   (on a primary's admin port)",
    method: "POST",
    options: { timeout: { type: "string" } },
    body: (v) => ({
      timeoutMs: parseDuration(typeof v.timeout === "string" ? v.timeout : "30s", "--timeout"),
    }),
  },
  resolve: {
    usage: " --discard remote|local   (on a primary in split brain)",
    method: "POST",
    options: { discard: { type: "string" } },
    body: (v) => {
      if (typeof v.discard !== "string")
        throw new UsageError(
          "--discard remote|local is required: which side's changes since the split are thrown away",
        );
      return { discard: oneOf(v.discard, ["remote", "local"] as const, "--discard") };
    },
  },
  resync: {
    usage: " --rate RATE   (bytes per second, e.g. 100M; 0 for no limit)",
    method: "POST",
    options: { rate: { type: "string" } },
    body: (v) => {
      if (typeof v.rate !== "string") throw new UsageError("--rate RATE is required, e.g. 100M");
      return { rate: rateOption(v.rate, "--rate") };
    },
  },
  verify: {
    usage:
      " [--no-resync] [--rate RATE] [--wait]   (on a primary; --wait exits 1 if tracks differ)",
    method: "POST",
    options: {
      "no-resync": { type: "boolean" },
      rate: { type: "string" },
      wait: { type: "boolean" },
    },
    body: (v) => ({
      resync: v["no-resync"] !== true,
      rate: typeof v.rate === "string" ? rateOption(v.rate, "--rate") : 0,
    }),
    then: async (admin, v) => (v.wait === true ? waitForVerify(admin) : 0),
  },
  "link set": {
    usage: " SETTING...   (on a primary with link emulation)",
    help: LINK_SET_HELP,
    method: "POST",
    path: "/link/set",
    options: LINK_SET_OPTIONS,
    body: linkSetBody,
  },
  "disk set": {
    usage: " SETTING...   (on a primary with the disk fault filter)",
    help: DISK_SET_HELP,
    method: "POST",
    path: "/disk/set",
    options: DISK_SET_OPTIONS,
    body: diskSetBody,
  },
  "link cut": {
    usage: "   (on a primary: close the link's connection; it reconnects)",
    method: "POST",
    path: "/link/cut",
  },
};

interface VerifyStatus {
  readonly verify?: {
    readonly running: boolean;
    readonly checkedTracks: number;
    readonly totalTracks: number;
    readonly last: {
      readonly complete: boolean;
      readonly stoppedBecause: string | null;
      readonly differingTracks: number;
      readonly busyTracks: number;
    } | null;
  };
}

/** Polls the status until the verify ends; prints its result. 0: no differences found. */
async function waitForVerify(admin: AdminTarget): Promise<number> {
  for (;;) {
    await new Promise((r) => setTimeout(r, 500));
    const s = (await call(admin, "GET", "/status")) as VerifyStatus;
    const v = s.verify;
    if (v === undefined) throw new Error("this controller reports no verify");
    if (v.running) continue;
    const last = v.last;
    if (last === null) throw new Error("the verify ended without a result");
    process.stdout.write(`${JSON.stringify(last, null, 2)}\n`);
    if (!last.complete) {
      process.stderr.write(`verify stopped before the end: ${last.stoppedBecause ?? "unknown"}\n`);
      return 1;
    }
    if (last.differingTracks > 0) {
      process.stderr.write(`verify: ${last.differingTracks} tracks differ on the secondary\n`);
      return 1;
    }
    return 0;
  }
}

export const CONTROL_VERBS = Object.keys(VERBS);

/** An admin API to call: its base URL, the token, and the CA for HTTPS. */
export interface AdminTarget {
  readonly base: string;
  readonly token: string | undefined;
  readonly ca: Buffer | undefined;
}

/** The --admin, --admin-token-file and --admin-tls-certificates of a command. */
export async function adminTarget(values: Values): Promise<AdminTarget> {
  const text = typeof values.admin === "string" ? values.admin : "127.0.0.1:10819";
  const ep = parseListen(text, "--admin");
  if (ep.kind !== "tcp") throw new UsageError("--admin takes HOST:PORT");
  const dir = values["admin-tls-certificates"];
  const ca =
    typeof dir === "string"
      ? await asUsageAsync(() => readPem(dir, "ca-cert.pem", true))
      : undefined;
  const host = ep.host.includes(":") ? `[${ep.host}]` : ep.host;
  const base = `${ca === undefined ? "http" : "https"}://${host}:${ep.port}`;
  const given = values["admin-token-file"];
  const file = typeof given === "string" ? given : defaultTokenFile(tokenDir(), ep.host, ep.port);
  // Without --admin-token-file, reads on loopback still work when the default file is missing.
  const token =
    typeof given === "string" || existsSync(file)
      ? await asUsageAsync(() => readTokenFile(file))
      : undefined;
  return { base, token, ca };
}

async function asUsageAsync<T>(load: () => Promise<T>): Promise<T> {
  try {
    return await load();
  } catch (err) {
    throw new UsageError((err as Error).message, { cause: err });
  }
}

function request(
  admin: AdminTarget,
  method: "GET" | "POST",
  path: string,
  body: string | undefined,
): Promise<{ status: number; text: string }> {
  const url = new URL(path, admin.base);
  const headers: Record<string, string> = {};
  if (admin.token !== undefined) headers.authorization = `Bearer ${admin.token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const options = { method, headers, timeout: 30_000 };
  return new Promise((resolve, reject) => {
    const req =
      url.protocol === "https:"
        ? https.request(url, { ...options, ca: admin.ca, minVersion: "TLSv1.2" })
        : http.request(url, options);
    req.on("response", (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (text += chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error("no answer within 30 s")));
    req.on("error", reject);
    req.end(body);
  });
}

/** A reply of the admin API that is not 2xx, with the error it gave. */
export class AdminError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
    this.name = "AdminError";
  }
}

export async function call(
  admin: AdminTarget,
  method: "GET" | "POST",
  path: string,
  body?: Record<string, unknown>,
): Promise<unknown> {
  let res: { status: number; text: string };
  try {
    res = await request(admin, method, path, body === undefined ? undefined : JSON.stringify(body));
  } catch (err) {
    throw new Error(
      `cannot reach the admin API at ${admin.base}: ${reachError(err)}; is the controller running, started with --admin ${new URL(admin.base).host}?`,
      { cause: err },
    );
  }
  let reply: unknown;
  try {
    reply = JSON.parse(res.text);
  } catch {
    throw new Error(
      `${admin.base}${path} answered HTTP ${res.status} with something that is not JSON: is --admin the address of a peercopy admin API (not its NBD port)?`,
    );
  }
  if (res.status < 200 || res.status > 299) {
    const error = (reply as { error?: unknown }).error;
    const hint =
      res.status === 401 && admin.token === undefined
        ? `; no token was sent (no --admin-token-file, and no ${defaultTokenFileHint(admin)})`
        : "";
    throw new AdminError(
      `${method} ${path}: ${typeof error === "string" ? error : `HTTP ${res.status}`}${hint}`,
      res.status,
    );
  }
  return reply;
}

function defaultTokenFileHint(admin: AdminTarget): string {
  const url = new URL(admin.base);
  return defaultTokenFile(tokenDir(), url.hostname.replace(/^\[|\]$/g, ""), Number(url.port));
}

/** Why the request could not talk to the address, in a few words. */
function reachError(err: unknown): string {
  const code = (err as { code?: unknown }).code;
  const message = (err as Error).message;
  if (code === "ECONNREFUSED") return "connection refused (nothing listens there)";
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") return "no such host";
  if (code === "ETIMEDOUT" || code === "EHOSTUNREACH" || code === "ENETUNREACH")
    return `${code} (the host does not answer)`;
  if (typeof code === "string" && code.startsWith("HPE_"))
    return "what answered there does not speak HTTP (an NBD port?)";
  if (code === "ECONNRESET")
    return "the connection was closed without an answer (an NBD port, or HTTPS?)";
  return typeof code === "string" ? `${message} (${code})` : message;
}

/** A 404 for a verb: say which controller serves it, from the role this one reports. */
async function wrongPort(admin: AdminTarget, action: string, verb: Verb, err: AdminError) {
  if (err.status !== 404 || verb.on === "both") return err;
  const want = verb.on ?? "primary";
  let role = "controller";
  try {
    const s = (await call(admin, "GET", "/status")) as { role?: unknown };
    if (typeof s.role === "string") role = s.role;
  } catch {
    return err;
  }
  if (role === want) return err;
  return new Error(
    `${action}: the controller at ${admin.base} is a ${role}; ${action} runs on a ${want}'s admin port (give that one with --admin HOST:PORT)`,
  );
}

export function controlCommand(action: string) {
  const verb = VERBS[action];
  if (verb === undefined) throw new Error(`no control verb ${action}`);
  return async (args: string[]): Promise<number> => {
    const options = { ...COMMON, ...verb.options };
    const parsed = asUsage(() => parseArgs({ args, options, strict: true }));
    const values = parsed.values as Values;
    if (values.help === true) {
      process.stdout.write(
        `usage: peercopy ${action} [--admin HOST:PORT]${verb.usage}\n${COMMON_HELP}${verb.help ?? ""}`,
      );
      return 0;
    }
    const admin = await adminTarget(values);
    if (values.watch === true) {
      const interval = parseDuration((values.interval as string | undefined) ?? "1s", "--interval");
      const stop = waitForSignal().then(() => undefined);
      await watch(() => call(admin, "GET", "/status"), interval, stop);
      return 0;
    }
    const body = verb.body?.(values);
    let reply: unknown;
    try {
      reply = await call(admin, verb.method, verb.path ?? `/${action}`, body);
    } catch (err) {
      throw err instanceof AdminError ? await wrongPort(admin, action, verb, err) : err;
    }
    process.stdout.write(verb.print?.(reply, values) ?? `${JSON.stringify(reply, null, 2)}\n`);
    return verb.then === undefined ? 0 : verb.then(admin, values);
  };
}

/** A command whose verbs are two words, e.g. `peercopy link set`. */
export function controlGroup(group: string) {
  const subs = CONTROL_VERBS.filter((v) => v.startsWith(`${group} `)).map((v) =>
    v.slice(group.length + 1),
  );
  return async (args: string[]): Promise<number> => {
    const [sub, ...rest] = args;
    if (sub === undefined || sub === "--help" || sub === "-h") {
      const lines = subs.map(
        (s) => `  peercopy ${group} ${s} [--admin HOST:PORT]${VERBS[`${group} ${s}`]?.usage}`,
      );
      process.stdout.write(`usage:\n${lines.join("\n")}\n`);
      return sub === undefined ? 2 : 0;
    }
    if (!subs.includes(sub))
      throw new UsageError(
        `unknown "${group} ${sub}"; the ${group} commands are ${subs.map((s) => `${group} ${s}`).join(", ")}`,
      );
    return controlCommand(`${group} ${sub}`)(rest);
  };
}
