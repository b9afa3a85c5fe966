// The disk fault filter: errors and slow writes on the local volume, for
// experiments ("the primary's disk fails"). It sits right above the volume,
// under the mirror, the resync and verify, and fails a request the way a
// failing disk does: an Error with code "EIO" from the backend, before the
// request reaches the volume (nothing of a failed write is written).
import type { Backend } from "../backend/types.js";
import { Filter } from "../backend/filter.js";
import { UsageError } from "../cli/args.js";
import { duration, fraction, OFF, range, type ErrorRange } from "./settings.js";

export interface DiskFaults {
  /** Fraction of reads that fail with EIO. */
  readErrorRate: number;
  /** Fraction of writes (write, zero, trim) that fail with EIO. */
  writeErrorRate: number;
  /** Reads overlapping this range fail with EIO. */
  readErrorRange: ErrorRange | null;
  /** Writes overlapping this range fail with EIO. */
  writeErrorRange: ErrorRange | null;
  /** Every write takes this much longer (a slow disk). */
  writeDelayMs: number;
}

export const NO_DISK_FAULTS: Readonly<DiskFaults> = {
  readErrorRate: 0,
  writeErrorRate: 0,
  readErrorRange: null,
  writeErrorRange: null,
  writeDelayMs: 0,
};

/** The keys of a change, and how a user spells them on the command line. */
export const DISK_KEYS = {
  readErrorRate: "read-error-rate",
  writeErrorRate: "write-error-rate",
  readErrorRange: "read-error-range",
  writeErrorRange: "write-error-range",
  writeDelay: "write-delay",
  reset: "reset",
} as const;
export type DiskKey = keyof typeof DISK_KEYS;

/**
 * Parses settings given as words (the primary's --disk-* options, POST
 * /disk/set, `peercopy disk set`); `name` turns a key into the name the user
 * typed, so every error names the option to fix.
 */
export function parseDiskChange(
  values: Readonly<Record<string, unknown>>,
  name: (key: DiskKey) => string,
): Partial<DiskFaults> {
  const change: Partial<DiskFaults> = {};
  // A reset comes first, whatever the order: the other settings apply on top of it.
  if (values.reset !== undefined && values.reset !== false) Object.assign(change, NO_DISK_FAULTS);
  for (const [key, raw] of Object.entries(values)) {
    if (raw === undefined || key === "reset") {
      if (key === "reset" && raw !== undefined && raw !== true && raw !== false && raw !== "true")
        throw new UsageError(`${name("reset")} takes no value (or true)`);
      continue;
    }
    if (!(key in DISK_KEYS)) {
      const known = Object.keys(DISK_KEYS).join(", ");
      throw new UsageError(`unknown disk setting "${key}"; the settings are ${known}`);
    }
    const option = name(key as DiskKey);
    const text = typeof raw === "number" ? String(raw) : raw;
    if (typeof text !== "string")
      throw new UsageError(`${option}: give a string such as "5ms", "0.01" or "1M:64K"`);
    switch (key as Exclude<DiskKey, "reset">) {
      case "readErrorRate":
        change.readErrorRate = fraction(text, option);
        break;
      case "writeErrorRate":
        change.writeErrorRate = fraction(text, option);
        break;
      case "readErrorRange":
        change.readErrorRange = OFF.has(text) ? null : range(text, option);
        break;
      case "writeErrorRange":
        change.writeErrorRange = OFF.has(text) ? null : range(text, option);
        break;
      case "writeDelay":
        change.writeDelayMs = OFF.has(text) ? 0 : duration(text, option, 60_000);
        break;
    }
  }
  return change;
}

/** The settings as GET /status shows them (numbers become Prometheus gauges). */
function describe(f: Readonly<DiskFaults>): Record<string, number | null> {
  return {
    readErrorRate: f.readErrorRate,
    writeErrorRate: f.writeErrorRate,
    readErrorRangeOffset: f.readErrorRange?.offset ?? null,
    readErrorRangeLength: f.readErrorRange?.length ?? null,
    writeErrorRangeOffset: f.writeErrorRange?.offset ?? null,
    writeErrorRangeLength: f.writeErrorRange?.length ?? null,
    writeDelayMs: f.writeDelayMs,
  };
}

export class DiskFaultFilter extends Filter {
  readonly faults: DiskFaults = { ...NO_DISK_FAULTS };
  injectedReadErrors = 0;
  injectedWriteErrors = 0;
  delayedWrites = 0;
  declare writev?: (parts: readonly Buffer[], offset: number, flags: number) => Promise<void>;

  constructor(
    next: Backend,
    private readonly random: () => number = Math.random,
  ) {
    super(next);
    // A payload that arrived in pieces still reaches the volume as one writev.
    const below = next.writev?.bind(next);
    if (below !== undefined)
      this.writev = (parts, offset, flags) => {
        let length = 0;
        for (const p of parts) length += p.length;
        const fault = this.writeFault(offset, length);
        return fault === undefined
          ? below(parts, offset, flags)
          : fault.then(() => below(parts, offset, flags));
      };
  }

  /** Apply a change now; returns the settings in force. */
  apply(change: Partial<DiskFaults>): Record<string, number | null> {
    Object.assign(this.faults, change);
    return describe(this.faults);
  }

  /** For GET /status: the settings and what they have done so far. */
  status(): Record<string, number | null> {
    return {
      ...describe(this.faults),
      injectedReadErrors: this.injectedReadErrors,
      injectedWriteErrors: this.injectedWriteErrors,
      delayedWrites: this.delayedWrites,
    };
  }

  override read(into: Buffer, offset: number): Promise<void> {
    const f = this.faults;
    if (fails(f.readErrorRange, f.readErrorRate, offset, into.length, this.random)) {
      this.injectedReadErrors++;
      return Promise.reject(diskError("read", offset, into.length));
    }
    return this.next.read(into, offset);
  }

  override write(data: Buffer, offset: number, flags: number): Promise<void> {
    const fault = this.writeFault(offset, data.length);
    if (fault === undefined) return this.next.write(data, offset, flags);
    return fault.then(() => this.next.write(data, offset, flags));
  }

  override zero(offset: number, length: number, flags: number): Promise<void> {
    const fault = this.writeFault(offset, length);
    if (fault === undefined) return this.next.zero(offset, length, flags);
    return fault.then(() => this.next.zero(offset, length, flags));
  }

  override trim(offset: number, length: number, flags: number): Promise<void> {
    const fault = this.writeFault(offset, length);
    if (fault === undefined) return this.next.trim(offset, length, flags);
    return fault.then(() => this.next.trim(offset, length, flags));
  }

  /** undefined: go ahead now; else a promise that waits out the delay, then fails or not. */
  private writeFault(offset: number, length: number): Promise<void> | undefined {
    const f = this.faults;
    const fail = fails(f.writeErrorRange, f.writeErrorRate, offset, length, this.random);
    if (fail) this.injectedWriteErrors++;
    if (f.writeDelayMs > 0) {
      this.delayedWrites++;
      return new Promise((resolve, reject) =>
        setTimeout(() => {
          if (fail) reject(diskError("write", offset, length));
          else resolve();
        }, f.writeDelayMs),
      );
    }
    return fail ? Promise.reject(diskError("write", offset, length)) : undefined;
  }
}

function fails(
  r: ErrorRange | null,
  rate: number,
  offset: number,
  length: number,
  random: () => number,
): boolean {
  return (
    (r !== null && offset < r.offset + r.length && r.offset < offset + length) ||
    (rate > 0 && random() < rate)
  );
}

/** What a failing disk gives back: an I/O error, as from pread/pwrite. */
function diskError(op: "read" | "write", offset: number, length: number): Error {
  return Object.assign(
    new Error(`EIO: i/o error, ${op} at offset ${offset} length ${length} (disk fault filter)`),
    { code: "EIO", errno: -5, syscall: op },
  );
}
