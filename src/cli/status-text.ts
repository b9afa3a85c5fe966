// `peercopy status` for a person: a few lines from a primary's or a secondary's
// GET /status, coloured on a terminal. Every figure is read from the status as
// served; a field the controller does not report is left out, never guessed.

export interface TextOptions {
  /** ANSI colours (on a terminal, unless NO_COLOR is set). */
  readonly color: boolean;
}

type Json = Readonly<Record<string, unknown>>;

const KiB = 1024;
const MiB = 1024 * KiB;

const GOOD = new Set(["full-duplex", "secondary"]);
const BAD = new Set(["split-brain", "failed", "unknown"]);

export function formatStatus(status: Json, options: TextOptions): string {
  const paint = painter(options.color);
  const lines: string[] = [];
  const row = (label: string, text: string): void => {
    lines.push(`  ${label.padEnd(12)}${text}`);
  };
  const role = str(status.role) ?? "controller";
  const host = obj(status.host);
  const size = num(host.size);
  const where = [str(host.volume), size === undefined ? undefined : bytes(size)]
    .filter((x) => x !== undefined)
    .join(", ");
  const connections = num(host.connections) ?? num(status.connections);
  const hosts = connections === undefined ? "" : `, ${plural(connections, "connection")}`;
  lines.push(
    `${paint.bold(role)} ${str(host.uri) ?? ""}${where === "" ? "" : ` (${where}${hosts})`}`,
  );

  const state = str(status.pairState) ?? "unknown";
  const colour = GOOD.has(state) ? paint.green : BAD.has(state) ? paint.red : paint.yellow;
  row("pair", `${colour(state)}${why(status)}`);
  if (str(status.mode) !== undefined) row("mode", modeText(status));
  const link = obj(status.link);
  if (str(link.state) !== undefined) row("link", linkText(link, paint));
  else if (status.primarySeenMsAgo !== undefined) row("primary", primaryText(status));

  const faults = faultText(obj(link.emulation), obj(status.diskFaults));
  if (faults !== undefined) row("emulated", paint.yellow(faults));

  const oos = obj(status.outOfSync);
  const oosTracks = num(oos.tracks) ?? 0;
  const trackSize = num(status.trackSize);
  const trackCount =
    size !== undefined && trackSize !== undefined ? Math.ceil(size / trackSize) : undefined;
  const of = trackCount === undefined ? "" : ` of ${trackCount}`;
  const oosLine = `${plural(oosTracks, "track")}${of} (${bytes(num(oos.bytes) ?? 0)})`;
  row("out of sync", oosTracks === 0 ? paint.green(oosLine) : paint.yellow(oosLine));

  const lag = obj(status.lag);
  if (num(lag.writes) !== undefined)
    row(
      "lag",
      `${plural(num(lag.writes) ?? 0, "write")}, ${bytes(num(lag.bytes) ?? 0)}, ${num(lag.ms) ?? 0} ms`,
    );
  for (const name of ["resync", "verify"] as const) {
    const p = obj(status[name]);
    if (Object.keys(p).length > 0) row(name, progressText(p));
  }
  const errors = obj(status.errors);
  if (Object.keys(errors).length > 0 || str(link.lastError) !== undefined)
    row("errors", errorText(errors, str(link.lastError), paint));
  if (status.metadata !== undefined)
    row("metadata", str(status.metadata) ?? "none (marks are kept in memory only)");
  const pair = obj(status.pair);
  if (str(pair.current) !== undefined) row("generations", generationText(pair));
  return `${lines.join("\n")}\n`;
}

/** Why the pair is in its state: the suspend reason and detail, or the secondary's flags. */
function why(s: Json): string {
  const parts: string[] = [];
  const reason = str(s.suspendReason);
  if (reason !== undefined) parts.push(reason);
  const detail = str(s.stateDetail);
  if (detail !== undefined) parts.push(detail);
  if (s.demoted === true) parts.push("demoted: host writes are refused");
  if (s.promoted === true) parts.push("promoted: hosts may write, changes are recorded");
  const pair = obj(s.pair);
  if (s.role === "secondary" && pair.inconsistent === true)
    parts.push("a resync is writing it: not a state the primary ever had");
  if (s.role === "secondary" && pair.fresh === true)
    parts.push("never completed a copy from a primary");
  return parts.length === 0 ? "" : ` (${parts.join("; ")})`;
}

function modeText(s: Json): string {
  const lag = obj(s.lag);
  const limits: string[] = [];
  const maxBytes = num(lag.maxBytes);
  const maxMs = num(lag.maxMs);
  if (maxBytes !== undefined) limits.push(bytes(maxBytes));
  if (maxMs !== undefined) limits.push(`${maxMs} ms`);
  const policy = str(lag.policy);
  if (limits.length === 0) return str(s.mode) ?? "";
  return `${str(s.mode)}, lag at most ${limits.join(" / ")}${policy === undefined ? "" : ` (then ${policy})`}`;
}

function linkText(link: Json, paint: Painter): string {
  const state = str(link.state) ?? "?";
  const parts = [`${state === "up" ? paint.green(state) : paint.yellow(state)}`];
  if (str(link.remote) !== undefined) parts[0] += ` to ${str(link.remote)}`;
  if (link.ordered === true) parts[0] += " (ordered)";
  parts.push(`${num(link.inFlight) ?? 0} in flight`, `${num(link.queued) ?? 0} queued`);
  const sent = num(link.sentBytes);
  if (sent !== undefined) parts.push(`${bytes(sent)} sent`);
  const reconnects = num(link.reconnects) ?? 0;
  if (reconnects > 0) parts.push(plural(reconnects, "reconnect"));
  return parts.join(", ");
}

/** The link emulator's and the disk fault filter's settings that do something, tersely. */
function faultText(link: Json, disk: Json): string | undefined {
  if (Object.keys(link).length === 0 && Object.keys(disk).length === 0) return undefined;
  const set = (o: Json): string => {
    const parts: string[] = [];
    for (const [k, v] of Object.entries(o)) {
      if (typeof v !== "number" || k.endsWith("Length")) continue;
      if (k.endsWith("Offset")) {
        const len = num(o[k.replace(/Offset$/, "Length")]) ?? 0;
        parts.push(`${k.replace(/Offset$/, "")} ${bytes(v)}+${bytes(len)}`);
      } else if (v !== 0) parts.push(`${k} ${v}`);
    }
    return parts.length === 0 ? "nothing set" : parts.join(", ");
  };
  const parts: string[] = [];
  if (Object.keys(link).length > 0) parts.push(`link: ${set(link)}`);
  if (Object.keys(disk).length > 0) parts.push(`disk: ${set(disk)}`);
  return parts.join("; ");
}

function primaryText(s: Json): string {
  const ago = num(s.primarySeenMsAgo);
  if (ago === undefined) return "never connected";
  return `last request ${ago} ms ago`;
}

function progressText(p: Json): string {
  const total = num(p.totalTracks) ?? 0;
  const done = num(p.copiedTracks) ?? num(p.checkedTracks) ?? num(p.doneTracks) ?? 0;
  const rate = num(p.bytesPerSecond);
  const limit = num(p.rateLimit);
  const limitText = limit === undefined || limit === 0 ? "" : `, limit ${bytes(limit)}/s`;
  const differ = num(p.differingTracks);
  const differText = differ === undefined ? "" : `, ${differ} differ`;
  if (p.running !== true) {
    if (total === 0) return `idle${limitText}`;
    const last = obj(p.last);
    const busy = num(last.busyTracks) ?? 0;
    const busyText = busy === 0 ? "" : `, ${plural(busy, "track")} kept busy by writes`;
    const ended = last.complete === false ? " (stopped early)" : "";
    return `idle; the last one did ${done}/${total} tracks${differText}${busyText}${ended}${limitText}`;
  }
  const pct = total === 0 ? 100 : Math.floor((done / total) * 100);
  const parts = [`${pct}% (${done}/${total} tracks)${differText}`];
  if (rate !== undefined) parts.push(`${bytes(rate)}/s`);
  const eta = num(p.etaSeconds);
  parts.push(eta === undefined ? "ETA unknown" : `ETA ${duration(eta)}`);
  return parts.join(", ") + limitText;
}

function errorText(errors: Json, lastError: string | undefined, paint: Painter): string {
  const counts: string[] = [];
  const hostWrites = num(errors.hostWrites) ?? 0;
  const hostReads = num(errors.hostReads) ?? 0;
  const resyncReads = num(errors.resyncReads) ?? 0;
  const link = num(errors.link) ?? 0;
  if (hostWrites > 0) counts.push(plural(hostWrites, "host write error"));
  if (hostReads > 0) counts.push(plural(hostReads, "host read error"));
  if (resyncReads > 0) counts.push(plural(resyncReads, "resync read error"));
  if (link > 0) counts.push(plural(link, "link error"));
  const text = counts.length === 0 ? "none" : counts.join(", ");
  const last = lastError === undefined ? "" : `; last: ${lastError}`;
  return counts.length === 0 && last === "" ? paint.green(text) : paint.red(text + last);
}

function generationText(pair: Json): string {
  const parts = [`current ${str(pair.current)}`, `bitmap ${str(pair.bitmap)}`];
  if (str(pair.id) !== undefined) parts.push(`pair ${str(pair.id)}`);
  const decision = str(pair.lastDecision);
  if (decision !== undefined) parts.push(`last connect: ${decision}`);
  return parts.join(", ");
}

export function bytes(n: number): string {
  if (n < KiB) return `${n} B`;
  if (n < MiB) return `${(n / KiB).toFixed(1)} KiB`;
  if (n < 1024 * MiB) return `${(n / MiB).toFixed(1)} MiB`;
  if (n < 1024 * 1024 * MiB) return `${(n / 1024 / MiB).toFixed(1)} GiB`;
  return `${(n / 1024 / 1024 / MiB).toFixed(1)} TiB`;
}

export function duration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function str(v: unknown): string | undefined {
  return typeof v === "string" && v !== "" ? v : undefined;
}

function num(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

function obj(v: unknown): Json {
  return typeof v === "object" && v !== null ? (v as Json) : {};
}

type Paint = (s: string) => string;

interface Painter {
  readonly bold: Paint;
  readonly green: Paint;
  readonly yellow: Paint;
  readonly red: Paint;
}

function painter(color: boolean): Painter {
  const sgr =
    (code: number) =>
    (s: string): string =>
      color ? `\x1b[${code}m${s}\x1b[0m` : s;
  return { bold: sgr(1), green: sgr(32), yellow: sgr(33), red: sgr(31) };
}
