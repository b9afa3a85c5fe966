import { parseArgs, type ParseArgsConfig } from "node:util";
import type { Endpoint } from "../../nbd/transport.js";
import { UsageError } from "./args.js";
import { VolumeOpenError } from "../backend/file.js";

/** Run an argument parser, turning its complaints into usage errors. */
export function asUsage<T>(parse: () => T, option?: string): T {
  try {
    return parse();
  } catch (err) {
    // parseArgs puts its advice on later lines: keep the line that says what to write.
    const lines = (err as Error).message.split("\n");
    const dash = lines.find((l) => l.startsWith("To specify an option argument"));
    const message =
      dash === undefined
        ? (lines[0] ?? "bad arguments")
        : `${(lines[0] ?? "").replace(/\.$/, "")}; ${dash.charAt(0).toLowerCase()}${dash.slice(1).replace(/\.$/, "")}`;
    throw new UsageError(option === undefined ? message : `${option}: ${message}`, { cause: err });
  }
}

/** The NBD URI of an endpoint (NBD URI standard). */
export function endpointUri(endpoint: Endpoint, exportName: string): string {
  const name = encodeURIComponent(exportName);
  if (endpoint.kind === "unix")
    return `nbd+unix:///${name}?socket=${encodeURIComponent(endpoint.path)}`;
  const host = endpoint.host.includes(":") ? `[${endpoint.host}]` : endpoint.host;
  return `nbd://${host}:${endpoint.port}/${name}`;
}

export function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const handler = (signal: NodeJS.Signals): void => {
      process.off("SIGINT", handler);
      process.off("SIGTERM", handler);
      resolve(signal);
    };
    process.on("SIGINT", handler);
    process.on("SIGTERM", handler);
  });
}

/** Opening a volume fails on what the operator typed (missing file, wrong path): exit 2. */
export async function openOrUsage<T>(open: () => Promise<T>): Promise<T> {
  try {
    return await open();
  } catch (err) {
    if (err instanceof VolumeOpenError) throw new UsageError(err.message, { cause: err });
    throw err;
  }
}

/** Parses a command's arguments; for --help prints `help` and returns undefined. */
export function parseCommandLine<T extends ParseArgsConfig>(
  config: T,
  help: string,
): ReturnType<typeof parseArgs<T>> | undefined {
  const parsed = asUsage(() => parseArgs(config));
  if ((parsed.values as { help?: unknown }).help !== true) return parsed;
  process.stdout.write(`${help}\n`);
  return undefined;
}
