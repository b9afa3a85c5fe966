// Commands that talk to a running controller's admin API.
import { parseArgs, type ParseArgsConfig } from "node:util";
import { asUsage, waitForSignal } from "./common.js";
import { oneOf, parseDuration, parseListen, parseSize, UsageError } from "./args.js";
import { watch } from "./watch.js";
import { DISK_SET_HELP, DISK_SET_OPTIONS, diskSetBody } from "./disk-options.js";
import { LINK_SET_HELP, LINK_SET_OPTIONS, linkSetBody } from "./link-options.js";

const COMMON = {
  admin: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const satisfies ParseArgsConfig["options"];

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
  readonly then?: (base: string, values: Values) => Promise<number>;
}

function rateOption(text: string, flag: string): number {
  const bare = text.replace(/\/s$/, "");
  return bare === "0" ? 0 : parseSize(bare, flag);
}

const VERBS: Readonly<Record<string, Verb>> = {
  status: {
    usage: " [--watch [--interval 1s]]",
    method: "GET",
    options: { watch: { type: "boolean", short: "w" }, interval: { type: "string" } },
  },
  suspend: { usage: "", method: "POST" },
  resume: { usage: "", method: "POST" },
  promote: {
    usage: " [--force]   (on a secondary's admin port)",
    method: "POST",
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
    then: async (base, v) => (v.wait === true ? waitForVerify(base) : 0),
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
async function waitForVerify(base: string): Promise<number> {
  for (;;) {
    await new Promise((r) => setTimeout(r, 500));
    const s = (await call(base, "GET", "/status")) as VerifyStatus;
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

export function adminBase(value: string | undefined): string {
  const ep = parseListen(value ?? "127.0.0.1:10819", "--admin");
  if (ep.kind !== "tcp") throw new UsageError("--admin takes HOST:PORT");
  return `http://${ep.host}:${ep.port}`;
}

export async function call(
  base: string,
  method: "GET" | "POST",
  path: string,
  body?: Record<string, unknown>,
): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(`${base}${path}`, {
      method,
      ...(body === undefined
        ? {}
        : { body: JSON.stringify(body), headers: { "content-type": "application/json" } }),
    });
  } catch (err) {
    throw new Error(
      `cannot reach the admin API at ${base}: ${(err as Error).message}; is the controller running with --admin?`,
      { cause: err },
    );
  }
  const reply: unknown = await res.json();
  if (!res.ok)
    throw new Error(`${method} ${path}: ${(reply as { error?: string }).error ?? res.statusText}`);
  return reply;
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
        `usage: peercopy ${action} [--admin HOST:PORT]${verb.usage}\n  --admin defaults to 127.0.0.1:10819\n${verb.help ?? ""}`,
      );
      return 0;
    }
    const base = adminBase(values.admin as string | undefined);
    if (values.watch === true) {
      const interval = parseDuration((values.interval as string | undefined) ?? "1s", "--interval");
      const stop = waitForSignal().then(() => undefined);
      await watch(() => call(base, "GET", "/status"), interval, stop);
      return 0;
    }
    const body = verb.body?.(values);
    const reply = await call(base, verb.method, verb.path ?? `/${action}`, body);
    process.stdout.write(`${JSON.stringify(reply, null, 2)}\n`);
    return verb.then === undefined ? 0 : verb.then(base, values);
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
