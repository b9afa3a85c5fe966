// Parsing helpers shared by the subcommands. Every failure is a UsageError:
// exit code 2 and a one-line message saying what to fix.
import type { Endpoint } from "../../nbd/transport.js";

export class UsageError extends Error {
  readonly code = "EUSAGE";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "UsageError";
  }
}

const SUFFIXES: Readonly<Record<string, number>> = {
  "": 1,
  B: 1,
  K: 1024,
  M: 1024 ** 2,
  G: 1024 ** 3,
  T: 1024 ** 4,
};

/** "64M", "1G", "4096", "1.5G", "512K" → bytes. */
export function parseSize(text: string, option: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGTB]?)(?:i?B)?$/i.exec(text.trim());
  const factor = m === null ? undefined : SUFFIXES[(m[2] ?? "").toUpperCase()];
  if (m === null || factor === undefined)
    throw new UsageError(
      `${option}: "${text}" is not a size; use bytes or a K/M/G/T suffix, e.g. 1G`,
    );
  const bytes = Math.round(Number(m[1]) * factor);
  if (!Number.isSafeInteger(bytes) || bytes <= 0)
    throw new UsageError(`${option}: "${text}" must be a positive size below 8 PiB`);
  return bytes;
}

/** "HOST:PORT", ":PORT", "PORT" or "[v6]:PORT". */
export function parseListen(text: string, option = "--listen"): Endpoint {
  const m = /^(?:\[([^\]]+)\]|([^:]*))?:?(\d+)$/.exec(text.trim());
  const port = m === null ? NaN : Number(m[3]);
  if (m === null || !Number.isInteger(port) || port < 0 || port > 65535)
    throw new UsageError(`${option}: "${text}" is not HOST:PORT (e.g. 127.0.0.1:10809)`);
  const host = m[1] ?? (m[2] === undefined || m[2] === "" ? "127.0.0.1" : m[2]);
  return { kind: "tcp", host, port };
}

export function parseDuration(text: string, option: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s)?$/.exec(text.trim());
  if (m === null)
    throw new UsageError(`${option}: "${text}" is not a duration; use e.g. 500ms or 2s`);
  const factor = m[2] === "s" ? 1000 : 1;
  return Math.round(Number(m[1]) * factor);
}

export function oneOf<T extends string>(text: string, choices: readonly T[], option: string): T {
  if ((choices as readonly string[]).includes(text)) return text as T;
  throw new UsageError(`${option}: "${text}" is not one of ${choices.join(", ")}`);
}
