// Commands that talk to a running controller's admin API.
import { parseArgs } from "node:util";
import { asUsage } from "./common.js";
import { parseListen, UsageError } from "./args.js";

const OPTIONS = {
  admin: { type: "string" },
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
      process.stdout.write(
        `usage: peercopy ${action} [--admin HOST:PORT]   (default 127.0.0.1:10819)\n`,
      );
      return 0;
    }
    const body = await call(adminBase(values.admin), method, `/${action}`);
    process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
    return 0;
  };
}
