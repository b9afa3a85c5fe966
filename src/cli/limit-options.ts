// The NBD server's limits, shared by serve, primary and secondary: each has a
// default (nbd/server/server.ts DEFAULT_LIMITS) and a flag.
import { DEFAULT_LIMITS, type ServerLimits } from "../../nbd/server/server.js";
import { parseDuration, parseSize, UsageError } from "./args.js";

export const LIMIT_OPTIONS = {
  "max-connections": { type: "string" },
  "handshake-timeout": { type: "string" },
  "max-options": { type: "string" },
  "max-in-flight": { type: "string" },
  "max-total-in-flight": { type: "string" },
  "payload-timeout": { type: "string" },
} as const;

const MiB = 1024 * 1024;

export const LIMIT_HELP = `Limits (each reached is logged):
  --max-connections N       connections at once; more are closed (default ${DEFAULT_LIMITS.maxConnections})
  --handshake-timeout TIME  from connecting to transmission, TLS included (default ${DEFAULT_LIMITS.handshakeTimeoutMs / 1000}s)
  --max-options N           options before transmission (default ${DEFAULT_LIMITS.maxOptions})
  --max-in-flight SIZE      READ/WRITE bytes one connection holds before it stops
                            reading (default ${DEFAULT_LIMITS.maxInFlightBytes / MiB}M)
  --max-total-in-flight SIZE
                            the same for all connections together (default ${DEFAULT_LIMITS.maxTotalInFlightBytes / MiB}M)
  --payload-timeout TIME    for a WRITE's payload to arrive after its header (default ${DEFAULT_LIMITS.payloadTimeoutMs / 1000}s)`;

type LimitValues = Partial<Record<keyof typeof LIMIT_OPTIONS, string>>;

function count(text: string, flag: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1)
    throw new UsageError(`${flag} "${text}": give a whole number of at least 1`);
  return Number(text);
}

function positive(ms: number, flag: string): number {
  if (ms <= 0) throw new UsageError(`${flag}: give a duration above zero`);
  return ms;
}

/** The limits the flags set (the server's defaults fill in the rest). */
export function parseLimitArgs(values: LimitValues): Partial<ServerLimits> {
  const limits: Partial<ServerLimits> = {};
  const v = values;
  if (v["max-connections"] !== undefined)
    limits.maxConnections = count(v["max-connections"], "--max-connections");
  if (v["handshake-timeout"] !== undefined)
    limits.handshakeTimeoutMs = positive(
      parseDuration(v["handshake-timeout"], "--handshake-timeout"),
      "--handshake-timeout",
    );
  if (v["max-options"] !== undefined) limits.maxOptions = count(v["max-options"], "--max-options");
  // One request always goes, whatever its size: the check is before the next one.
  if (v["max-in-flight"] !== undefined)
    limits.maxInFlightBytes = parseSize(v["max-in-flight"], "--max-in-flight");
  if (v["max-total-in-flight"] !== undefined)
    limits.maxTotalInFlightBytes = parseSize(v["max-total-in-flight"], "--max-total-in-flight");
  if (v["payload-timeout"] !== undefined)
    limits.payloadTimeoutMs = positive(
      parseDuration(v["payload-timeout"], "--payload-timeout"),
      "--payload-timeout",
    );
  return limits;
}
