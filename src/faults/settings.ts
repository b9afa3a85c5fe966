// What the link emulator does, and the one parser for it: the primary's
// --link-* options, POST /link/set and `peercopy link set` all give the same
// words (e.g. {"latency": "5ms", "bandwidth": "100M", "errorRange": "0:1M"}).
import { parseDuration, parseSize, UsageError } from "../cli/args.js";

/** What shapes the bytes of both directions. */
export interface LinkShape {
  /** Added one-way delay, in each direction (a round trip gets twice this). */
  latencyMs: number;
  /** Up to this much more per chunk, uniformly; bytes never overtake each other. */
  jitterMs: number;
  /** Bytes per second in each direction; 0: no cap. */
  bandwidth: number;
  /** Nothing moves before this time (performance.now() ms): a stall. */
  frozenUntil: number;
}

export interface ErrorRange {
  readonly offset: number;
  readonly length: number;
}

export interface LinkFaults {
  latencyMs: number;
  jitterMs: number;
  bandwidth: number;
  /** Each periodic stall freezes the link this long. */
  stallMs: number;
  /** A stall of stallMs every this many ms; 0: none. */
  stallEveryMs: number;
  /** Close the connection every this many ms; 0: never. */
  disconnectEveryMs: number;
  /** Fraction of writes answered with NBD_EIO instead of reaching the secondary. */
  errorRate: number;
  /** Writes overlapping this range are answered with NBD_EIO. */
  errorRange: ErrorRange | null;
}

export const NO_LINK_FAULTS: Readonly<LinkFaults> = {
  latencyMs: 0,
  jitterMs: 0,
  bandwidth: 0,
  stallMs: 0,
  stallEveryMs: 0,
  disconnectEveryMs: 0,
  errorRate: 0,
  errorRange: null,
};

/** A change: the settings to replace, and one-off events to cause now. */
export interface LinkChange {
  readonly faults: Partial<LinkFaults>;
  /** Freeze the link this long, now (a one-off stall). */
  readonly stallNowMs?: number;
  /** Close the connection now. */
  readonly disconnectNow?: boolean;
  /** Close the connection once, this long from now. */
  readonly disconnectAfterMs?: number;
}

/** The keys of a change, and how a user spells them on the command line. */
export const LINK_KEYS = {
  latency: "latency",
  jitter: "jitter",
  bandwidth: "bandwidth",
  stall: "stall",
  stallEvery: "stall-every",
  disconnect: "disconnect",
  disconnectEvery: "disconnect-every",
  disconnectAfter: "disconnect-after",
  errorRate: "error-rate",
  errorRange: "error-range",
  reset: "reset",
} as const;
export type LinkKey = keyof typeof LINK_KEYS;

export const OFF = new Set(["off", "none", "0"]);

/**
 * Parses settings given as words; `name` turns a key into the name the user
 * typed (e.g. "--link-latency"), so every error names the option to fix.
 */
export function parseLinkChange(
  values: Readonly<Record<string, unknown>>,
  name: (key: LinkKey) => string,
): LinkChange {
  const faults: Partial<LinkFaults> = {};
  let stallNowMs: number | undefined;
  let disconnectNow: boolean | undefined;
  let disconnectAfterMs: number | undefined;
  // A reset comes first, whatever the order: the other settings apply on top of it.
  if (values.reset !== undefined && values.reset !== false) Object.assign(faults, NO_LINK_FAULTS);
  for (const [key, raw] of Object.entries(values)) {
    if (raw === undefined || (key === "reset" && raw === false)) continue;
    if (!(key in LINK_KEYS)) {
      const known = Object.keys(LINK_KEYS).join(", ");
      throw new UsageError(`unknown link setting "${key}"; the settings are ${known}`);
    }
    const option = name(key as LinkKey);
    const text = typeof raw === "number" ? String(raw) : raw;
    if (key === "disconnect" || key === "reset") {
      if (raw !== true && raw !== "true")
        throw new UsageError(`${option} takes no value (or true)`);
      if (key === "disconnect") disconnectNow = true;
      continue;
    }
    if (typeof text !== "string")
      throw new UsageError(`${option}: give a string such as "5ms", "100M" or "off"`);
    switch (key as LinkKey) {
      case "latency":
        faults.latencyMs = duration(text, option, 60_000);
        break;
      case "jitter":
        faults.jitterMs = duration(text, option, 60_000);
        break;
      case "bandwidth":
        faults.bandwidth = OFF.has(text) ? 0 : parseSize(text.replace(/\/s$/, ""), option);
        break;
      case "stall":
        stallNowMs = duration(text, option, 600_000);
        break;
      case "stallEvery":
        faults.stallEveryMs = OFF.has(text) ? 0 : duration(text, option, 86_400_000);
        break;
      case "disconnectEvery":
        faults.disconnectEveryMs = OFF.has(text) ? 0 : duration(text, option, 86_400_000);
        if (faults.disconnectEveryMs !== 0 && faults.disconnectEveryMs < 100)
          throw new UsageError(`${option}: "${text}" is too often; give 100ms or more`);
        break;
      case "disconnectAfter":
        disconnectAfterMs = duration(text, option, 86_400_000);
        break;
      case "errorRate":
        faults.errorRate = fraction(text, option);
        break;
      case "errorRange":
        faults.errorRange = OFF.has(text) ? null : range(text, option);
        break;
    }
  }
  // A stall given with a period is the length of each periodic stall; alone, a one-off now.
  if (stallNowMs !== undefined && faults.stallEveryMs !== undefined && faults.stallEveryMs > 0) {
    faults.stallMs = stallNowMs;
    stallNowMs = undefined;
    if (faults.stallMs === 0 || faults.stallMs >= faults.stallEveryMs)
      throw new UsageError(
        `${name("stall")} must be longer than 0 and shorter than ${name("stallEvery")}`,
      );
  } else if (faults.stallEveryMs !== undefined && faults.stallEveryMs > 0) {
    throw new UsageError(`${name("stallEvery")} needs ${name("stall")} (how long each stall is)`);
  }
  return { faults, stallNowMs, disconnectNow, disconnectAfterMs };
}

export function duration(text: string, option: string, max: number): number {
  const ms = parseDuration(text, option);
  if (ms > max) throw new UsageError(`${option}: "${text}" is longer than ${max / 1000} s`);
  return ms;
}

/** "0.01", "1%" → 0.01. */
export function fraction(text: string, option: string): number {
  const m = /^(\d+(?:\.\d+)?)(%?)$/.exec(text.trim());
  const value = m === null ? NaN : Number(m[1]) / (m[2] === "%" ? 100 : 1);
  if (!(value >= 0 && value <= 1))
    throw new UsageError(`${option}: "${text}" is not a fraction from 0 to 1 (e.g. 0.01 or 1%)`);
  return value;
}

/** "OFFSET:LENGTH" with sizes, e.g. 1M:64K. */
export function range(text: string, option: string): ErrorRange {
  const [at, len, ...rest] = text.split(":");
  if (at === undefined || len === undefined || rest.length > 0)
    throw new UsageError(`${option}: "${text}" is not OFFSET:LENGTH (e.g. 1M:64K) or off`);
  const offset = at.trim() === "0" ? 0 : parseSize(at, option);
  return { offset, length: parseSize(len, option) };
}

/** The settings as GET /status shows them (numbers become Prometheus gauges). */
export function describeLinkFaults(f: Readonly<LinkFaults>): Record<string, number | null> {
  return {
    latencyMs: f.latencyMs,
    jitterMs: f.jitterMs,
    bandwidthBytesPerSecond: f.bandwidth,
    stallMs: f.stallMs,
    stallEveryMs: f.stallEveryMs,
    disconnectEveryMs: f.disconnectEveryMs,
    errorRate: f.errorRate,
    errorRangeOffset: f.errorRange?.offset ?? null,
    errorRangeLength: f.errorRange?.length ?? null,
  };
}
