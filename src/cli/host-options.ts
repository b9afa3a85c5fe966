// Options every controller command shares: the volume and where hosts reach it.
import type { Endpoint } from "../../nbd/transport.js";
import type { VolumeSpec } from "../volume.js";
import { parseListen, parseSize, UsageError } from "./args.js";

export const HOST_OPTIONS = {
  size: { type: "string" },
  memory: { type: "string" },
  listen: { type: "string" },
  socket: { type: "string" },
  export: { type: "string" },
  "log-level": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

export const HOST_HELP = `  --size SIZE         create IMAGE as a sparse file of SIZE if it does not exist
  --memory SIZE       use a RAM volume of SIZE instead of IMAGE
  --listen HOST:PORT  TCP address for hosts (default DEFAULT_LISTEN; port 0 picks one)
  --socket PATH       listen on a unix socket instead of TCP
  --export NAME       export name hosts use (default: the empty name)
  --log-level LEVEL   trace, debug, info, warn, error (default info)`;

export interface HostArgs {
  volume: VolumeSpec;
  listen: Endpoint;
  exportName: string;
  logLevel: string;
}

interface HostValues {
  size?: string;
  memory?: string;
  listen?: string;
  socket?: string;
  export?: string;
  "log-level"?: string;
}

export function parseHostArgs(
  values: HostValues,
  positionals: string[],
  defaultListen: string,
  readOnly = false,
): HostArgs {
  const memory = values.memory === undefined ? undefined : parseSize(values.memory, "--memory");
  const size = values.size === undefined ? undefined : parseSize(values.size, "--size");
  if (positionals.length > 1)
    throw new UsageError(`expected one IMAGE, got ${positionals.length}: ${positionals.join(" ")}`);
  const image = positionals[0];
  if (image === undefined && memory === undefined)
    throw new UsageError("give an IMAGE path or --memory SIZE");
  if (image !== undefined && memory !== undefined)
    throw new UsageError("give either an IMAGE path or --memory SIZE, not both");
  if (values.listen !== undefined && values.socket !== undefined)
    throw new UsageError("give either --listen or --socket, not both");
  const listen: Endpoint =
    values.socket !== undefined
      ? { kind: "unix", path: values.socket }
      : parseListen(values.listen ?? defaultListen);
  const logLevel = values["log-level"] ?? "info";
  const levels = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];
  if (!levels.includes(logLevel))
    throw new UsageError(`--log-level: "${logLevel}" is not one of ${levels.join(", ")}`);
  return {
    volume: { image, memory, size, readOnly },
    listen,
    exportName: values.export ?? "",
    logLevel,
  };
}
