// The primary's --disk-* options (the disk fault filter) and `peercopy disk set`.
import { UsageError } from "./args.js";
import { DISK_KEYS, parseDiskChange, type DiskFaults, type DiskKey } from "../faults/disk.js";

export const DISK_OPTIONS = {
  "disk-faults": { type: "boolean" },
  "disk-read-error-rate": { type: "string" },
  "disk-write-error-rate": { type: "string" },
  "disk-read-error-range": { type: "string" },
  "disk-write-error-range": { type: "string" },
  "disk-write-delay": { type: "string" },
} as const;

export const DISK_HELP = `
disk faults on the local volume (for experiments; any of these puts the filter on):
  --disk-faults           the filter with nothing set, for peercopy disk set
  --disk-read-error-rate FRACTION
                          fail that fraction of reads with EIO (e.g. 0.01)
  --disk-write-error-rate FRACTION
                          fail that fraction of writes with EIO
  --disk-read-error-range OFFSET:LENGTH
                          fail reads of that range with EIO (e.g. 1M:64K)
  --disk-write-error-range OFFSET:LENGTH
                          fail writes to that range with EIO
  --disk-write-delay DURATION
                          every write to the local volume takes that much longer`;

type DiskValues = Partial<Record<keyof typeof DISK_OPTIONS, string | boolean>>;

/** The filter's starting settings, or undefined when no --disk-* option is given. */
export function parseDiskArgs(values: DiskValues): Partial<DiskFaults> | undefined {
  const words: Record<string, unknown> = {};
  let any = values["disk-faults"] === true;
  for (const [key, spelled] of Object.entries(DISK_KEYS)) {
    if (key === "reset") continue;
    const value = values[`disk-${spelled}` as keyof DiskValues];
    if (value === undefined) continue;
    words[key] = value;
    any = true;
  }
  if (!any) return undefined;
  return parseDiskChange(words, (key: DiskKey) => `--disk-${DISK_KEYS[key]}`);
}

export const DISK_SET_HELP = `
Changes the disk fault filter of a primary started with --disk-faults (or any
--disk-* option), at once. Settings not given stay as they are.

  --read-error-rate FRACTION      fail that fraction of reads with EIO (0 for none)
  --write-error-rate FRACTION     fail that fraction of writes with EIO
  --read-error-range OFFSET:LENGTH|off
  --write-error-range OFFSET:LENGTH|off
                                  fail reads of / writes to that range with EIO
  --write-delay DURATION|off      every write takes that much longer
  --reset                         everything back to nothing (applied before the others)

It prints the settings in force.
`;

export const DISK_SET_OPTIONS = Object.fromEntries(
  Object.values(DISK_KEYS).map((o) => [o, { type: o === "reset" ? "boolean" : "string" } as const]),
);

/** The body of POST /disk/set from `peercopy disk set` options, checked here first. */
export function diskSetBody(
  values: Readonly<Record<string, string | boolean | undefined>>,
): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  for (const [key, spelled] of Object.entries(DISK_KEYS))
    if (values[spelled] !== undefined) body[key] = values[spelled];
  if (Object.keys(body).length === 0)
    throw new UsageError("give at least one setting, e.g. --write-error-range 1M:64K (see --help)");
  parseDiskChange(body, (key: DiskKey) => `--${DISK_KEYS[key]}`);
  return body;
}
