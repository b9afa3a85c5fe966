// The primary's --link-* options (the link emulator) and `peercopy link set`.
import { UsageError } from "./args.js";
import { LINK_KEYS, parseLinkChange, type LinkChange, type LinkKey } from "../faults/settings.js";

export const LINK_OPTIONS = {
  "link-emulation": { type: "boolean" },
  "link-latency": { type: "string" },
  "link-jitter": { type: "string" },
  "link-bandwidth": { type: "string" },
  "link-stall": { type: "string" },
  "link-stall-every": { type: "string" },
  "link-disconnect-after": { type: "string" },
  "link-disconnect-every": { type: "string" },
  "link-error-rate": { type: "string" },
  "link-error-range": { type: "string" },
} as const;

export const LINK_HELP = `
link emulation (for experiments; any of these puts the emulator on the link):
  --link-emulation        the emulator with nothing set, for peercopy link set
  --link-latency DURATION added one-way delay, each direction (e.g. 5ms)
  --link-jitter DURATION  up to this much more per chunk, uniformly (e.g. 1ms)
  --link-bandwidth RATE   bytes per second each way, e.g. 100M
  --link-stall DURATION --link-stall-every DURATION
                          freeze the link that long, periodically
  --link-disconnect-after DURATION
                          close the connection once, that long after the start
  --link-disconnect-every DURATION
                          close the connection periodically (e.g. 10s)
  --link-error-rate FRACTION
                          answer that fraction of writes with NBD_EIO (e.g. 0.01)
  --link-error-range OFFSET:LENGTH
                          answer writes to that range with NBD_EIO (e.g. 1M:64K)`;

type LinkValues = Partial<Record<keyof typeof LINK_OPTIONS, string | boolean>>;

/** The emulator's starting settings, or undefined when no --link-* option is given. */
export function parseLinkArgs(values: LinkValues): LinkChange | undefined {
  const words: Record<string, unknown> = {};
  let any = values["link-emulation"] === true;
  for (const [key, spelled] of Object.entries(LINK_KEYS)) {
    const value = values[`link-${spelled}` as keyof LinkValues];
    if (value === undefined) continue;
    words[key] = value;
    any = true;
  }
  if (!any) return undefined;
  const change = parseLinkChange(words, (key: LinkKey) => `--link-${LINK_KEYS[key]}`);
  if (change.stallNowMs !== undefined)
    throw new UsageError(
      "--link-stall at start needs --link-stall-every; for a single stall use peercopy link set --stall",
    );
  return change;
}

export const LINK_SET_HELP = `
Changes the link emulator of a primary started with --link-emulation (or any
--link-* option), at once. Settings not given stay as they are.

  --latency DURATION      added one-way delay, each direction (0 for none)
  --jitter DURATION       up to this much more per chunk
  --bandwidth RATE|off    bytes per second each way, e.g. 100M
  --stall DURATION        freeze the link that long, now (with --stall-every:
                          that long each time, periodically)
  --stall-every DURATION|off
  --disconnect            close the connection now
  --disconnect-after DURATION
                          close it once, that long from now
  --disconnect-every DURATION|off
  --error-rate FRACTION   answer that fraction of writes with NBD_EIO (0 for none)
  --error-range OFFSET:LENGTH|off
                          answer writes to that range with NBD_EIO
  --reset                 everything back to nothing (applied before the others)

It prints the settings in force.
`;

export const LINK_SET_OPTIONS = Object.fromEntries(
  Object.values(LINK_KEYS).map((o) => [
    o,
    { type: o === "disconnect" || o === "reset" ? "boolean" : "string" } as const,
  ]),
);

/** The body of POST /link/set from `peercopy link set` options, checked here first. */
export function linkSetBody(
  values: Readonly<Record<string, string | boolean | undefined>>,
): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  for (const [key, spelled] of Object.entries(LINK_KEYS))
    if (values[spelled] !== undefined) body[key] = values[spelled];
  if (Object.keys(body).length === 0)
    throw new UsageError("give at least one setting, e.g. --latency 20ms (see --help)");
  // A typo is a usage error naming the option before anything is sent.
  parseLinkChange(body, (key: LinkKey) => `--${LINK_KEYS[key]}`);
  return body;
}
