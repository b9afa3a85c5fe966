// Commands that talk to a running controller's admin API.
import { parseArgs } from "node:util";
import { asUsage, waitForSignal } from "./common.js";
import { parseDuration, parseListen, UsageError } from "./args.js";
import { watch } from "./watch.js";

const OPTIONS = {
  admin: { type: "string" },
  watch: { type: "boolean", short: "w" },
  interval: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

function adminBase(value: string | undefined): string {
  const ep = parseListen(value ?? "127.0.0.1:10819", "--admin");
  if (ep.kind !== "tcp") throw new UsageError("--admin takes HOST:PORT");
  return `http://${ep.host}:${ep.port}`;
}

async function call(base: string, method: "GET" | "POST", path: string): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(`${base}${path}`, { method });
  } catch (err) {
    throw new Error(
      `cannot reach the admin API at ${base}: ${(err as Error).message}; is the controller running with --admin?`,
      { cause: err },
    );
  }
  const body: unknown = await res.json();
  if (!res.ok)
    throw new Error(`${method} ${path}: ${(body as { error?: string }).error ?? res.statusText}`);
  return body;
}

export function controlCommand(action: string, method: "GET" | "POST") {
  return async (args: string[]): Promise<number> => {
    const { values } = asUsage(() => parseArgs({ args, options: OPTIONS, strict: true }));
    if (values.help === true) {
      const extra = action === "status" ? " [--watch [--interval 1s]]" : "";
      process.stdout.write(
        `usage: peercopy ${action} [--admin HOST:PORT]${extra}   (default 127.0.0.1:10819)\n`,
      );
      return 0;
    }
    const base = adminBase(values.admin);
    if (values.watch === true) {
      if (action !== "status") throw new UsageError("--watch goes with peercopy status only");
      const interval = parseDuration(values.interval ?? "1s", "--interval");
      const stop = waitForSignal().then(() => undefined);
      await watch(() => call(base, "GET", "/status"), interval, stop);
      return 0;
    }
    const body = await call(base, method, `/${action}`);
    process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
    return 0;
  };
}
