// The VM failover experiment: a Linux guest writes files to a mirrored pair,
// the primary is SIGKILLed mid-workload, the secondary is promoted, and a fresh
// guest checks the filesystem on the promoted side. Then the failback: the old
// primary comes back as the secondary and the promoted side resyncs it.
//
//   scripts/vm-experiment [--variant nbd|virtio|both] [--batches N] [--per N]
//                         [--no-failback] [--cache DIR] [--timeout SECONDS] [--json]
//
// Variant "nbd": the guest's kernel NBD client reaches the controller through
// qemu's user networking (guestfwd to one loopback port, nothing else). Variant
// "virtio": qemu itself is the NBD client and the guest sees a virtio disk.
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { ensureGuest, type Guest } from "./guest.js";
import { Controller, Qemu, type GuestLine } from "./processes.js";

const ROOT = resolve(import.meta.dirname, "../..");
const RELAY = join(import.meta.dirname, "relay.mjs");
const EXPORT = "vm";
const SIZE = "128M";
// The primary's activity log: this many 4 MiB extents hot at once, so a crash
// leaves at most 32 MiB marked beyond what was out of sync.
const AL_EXTENTS = 8;
const AL_EXTENT_BYTES = 4 * 1024 * 1024;

type Variant = "nbd" | "virtio";

export interface VariantReport {
  variant: Variant;
  mode: "sync";
  /** Seconds from qemu's start to the guest's first line, as the host saw it. */
  bootSeconds: number;
  /** Seconds from the guest's start to the first synced batch (mkfs included). */
  firstSyncSeconds: number;
  batchesSynced: number;
  filesSynced: number;
  filesPresent: number;
  filesIntact: number;
  missing: string[];
  corrupt: string[];
  /** Milliseconds from SIGKILL of the primary to the promote reply. */
  promoteMs: number;
  /** Milliseconds from the promote reply to the fresh guest's mount on the promoted side. */
  takeoverMs: number;
  fsckExit: number;
  fsckLog: string[];
  newWrite: boolean;
  failback?: FailbackReport;
  ok: boolean;
}

export interface FailbackReport {
  /** How the promoted side judged the pair when it reconnected (status pair.lastDecision). */
  decision: string;
  /** Tracks the promoted side changed since the promotion, and the old primary's marks. */
  changedOnPromoted: number;
  changedOnOldPrimary: number;
  /** What the old primary's metadata held when it restarted: its crash left the hot extents marked. */
  oldPrimaryMarked: number;
  /** The most a crash can leave marked beyond the bitmap: AL_EXTENTS × 4 MiB, in tracks. */
  activityLogBoundTracks: number;
  /** Tracks the promoted side copied to the old primary, of the volume's tracks. */
  tracksResynced: number;
  volumeTracks: number;
  resyncMs: number;
  imagesIdentical: boolean;
}

function seconds(ms: number): number {
  return Math.round(ms / 100) / 10;
}

/** qemu's command line; `memoryMiB` more than the default 384 for a guest that carries node. */
export function qemuArgs(
  guest: Guest,
  cmdline: string,
  disk: { variant: Variant; port: number },
  memoryMiB = 384,
) {
  const args = [
    ...["-machine", "q35", "-accel", "tcg", "-m", String(memoryMiB), "-smp", "1"],
    ...["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"],
    ...["-kernel", guest.kernel, "-initrd", guest.initrd],
    ...["-append", `console=ttyS0 quiet panic=-1 ${cmdline}`],
  ];
  if (disk.variant === "nbd") {
    // The guest's only way out: 10.0.2.100:10809 runs the relay to one loopback port.
    const fwd = `guestfwd=tcp:10.0.2.100:10809-cmd:${process.execPath} ${RELAY} ${disk.port}`;
    args.push("-netdev", `user,id=n0,restrict=on,${fwd}`);
    args.push("-device", "virtio-net-pci,netdev=n0,romfile=");
  } else {
    args.push("-nic", "none");
    const uri = `nbd://127.0.0.1:${disk.port}/${EXPORT}`;
    args.push("-drive", `file=${uri},format=raw,if=virtio,cache=writeback`);
  }
  return args;
}

/** cmp -s: true when the two files hold the same bytes. */
async function filesEqual(a: string, b: string): Promise<boolean> {
  return new Promise((done) => {
    execFile("cmp", ["-s", a, b], (err) => done(err === null));
  });
}

interface Options {
  variant: Variant;
  batches: number;
  per: number;
  failback: boolean;
  log: (line: string) => void;
  /** Milliseconds left of the whole experiment's time: every wait is bounded by it. */
  left: () => number;
}

async function runVariant(guest: Guest, o: Options): Promise<VariantReport> {
  const dir = await mkdtemp(join(tmpdir(), `peercopy-vm-${o.variant}-`));
  const imageA = join(dir, "a.img");
  const imageB = join(dir, "b.img");
  const procs: { stop(signal?: NodeJS.Signals): Promise<void> }[] = [];
  const start = <T extends { stop(signal?: NodeJS.Signals): Promise<void> }>(p: T): T => {
    procs.push(p);
    return p;
  };
  const host = ["--listen", "127.0.0.1:0", "--export", EXPORT, "--admin", "127.0.0.1:0"];
  const common = ["--size", SIZE, ...host, "--log-level", "info"];
  try {
    const b = await start(new Controller("secondary B", ["secondary", imageB, ...common])).ready();
    const remote = `nbd://127.0.0.1:${b.port}/replication`;
    const a = await start(
      new Controller("primary A", [
        "primary",
        imageA,
        ...common,
        "--remote",
        remote,
        "--mode",
        "sync",
        "--al-extents",
        String(AL_EXTENTS),
      ]),
    ).ready();
    await a.waitForStatus((s) => s.pairState === "full-duplex", "full-duplex", o.left());
    o.log(`${o.variant}: pair up (A ${a.uri} → B ${remote}); booting the writer`);

    const writer = start(
      new Qemu(
        "writer guest",
        qemuArgs(
          guest,
          `pc.mode=write pc.disk=${o.variant} pc.batches=${o.batches} pc.per=${o.per} pc.export=${EXPORT}`,
          { variant: o.variant, port: a.port },
        ),
      ),
    );
    const booted = await writer.waitFor("BOOTED", o.left());
    const first = await writer.waitFor("SYNCED", o.left());
    // The workload goes on past the last batch the host counts; the kill cuts it.
    await writer.waitFor("WORKLOAD", o.left());
    // Only batches reported before the kill count as synced.
    const synced = syncedFiles(writer.all());
    const killedAt = performance.now();
    await a.stop("SIGKILL");
    o.log(`${o.variant}: SIGKILL to the primary after ${synced.batches} synced batches`);
    await writer.stop("SIGKILL");

    await b.admin("POST", "/promote", { force: true });
    const promotedAt = performance.now();
    o.log(`${o.variant}: B promoted; booting a fresh guest on B's host export`);

    const checker = start(
      new Qemu(
        "checker guest",
        qemuArgs(guest, `pc.mode=check pc.disk=${o.variant} pc.export=${EXPORT}`, {
          variant: o.variant,
          port: b.port,
        }),
      ),
    );
    const mounted = await checker.waitFor("MOUNTED", o.left());
    const end = await checker.waitFor("END", o.left());
    const lines = checker.all();
    const sums = new Map(lines.filter((l) => l.word === "SUM").map((l) => [l.args[0], l.args[1]]));
    const missing = [...synced.files.keys()].filter((f) => !sums.has(f));
    const corrupt = [...synced.files].filter(([f, s]) => sums.has(f) && sums.get(f) !== s);
    const fsck = Number(lines.find((l) => l.word === "FSCK")?.args[0] ?? -1);
    const newWrite = lines.some((l) => l.word === "NEWWRITE" && l.args[0] === "ok");
    await checker.stop("SIGKILL");

    const report: VariantReport = {
      variant: o.variant,
      mode: "sync",
      bootSeconds: seconds(booted.at - writer.started),
      firstSyncSeconds: seconds(first.at - writer.started),
      batchesSynced: synced.batches,
      filesSynced: synced.files.size,
      filesPresent: synced.files.size - missing.length,
      filesIntact: synced.files.size - missing.length - corrupt.length,
      missing,
      corrupt: corrupt.map(([f]) => f),
      promoteMs: Math.round(promotedAt - killedAt),
      takeoverMs: Math.round(mounted.at - promotedAt),
      fsckExit: fsck,
      fsckLog: lines.filter((l) => l.word === "FSCKLOG").map((l) => l.args.join(" ")),
      newWrite,
      ok: false,
    };
    report.ok =
      end.args[0] === "0" &&
      synced.files.size > 0 &&
      missing.length === 0 &&
      corrupt.length === 0 &&
      fsck === 0 &&
      newWrite;

    if (o.failback) {
      report.failback = await failback(b, imageA, imageB, common, start, o);
      report.ok &&= report.failback.imagesIdentical;
    }
    return report;
  } finally {
    for (const p of procs.reverse()) await p.stop("SIGKILL");
    await rm(dir, { recursive: true, force: true });
  }
}

/** Files of the batches the guest reported synced, with their SHA-256. */
function syncedFiles(lines: readonly GuestLine[]): { batches: number; files: Map<string, string> } {
  const files = new Map<string, string>();
  let pending: [string, string][] = [];
  let batches = 0;
  for (const l of lines) {
    if (l.word === "FILE" && l.args[0] !== undefined && l.args[1] !== undefined)
      pending.push([l.args[0], l.args[1]]);
    if (l.word === "SYNCED") {
      for (const [f, s] of pending) files.set(f, s);
      pending = [];
      batches++;
    }
  }
  return { batches, files };
}

/**
 * The old primary's image and metadata come back as `peercopy secondary`; the
 * promoted side restarts as `peercopy primary` towards it and resyncs what
 * changed on either side since the split. Both stop cleanly, and the images
 * must then be identical.
 */
async function failback(
  promoted: Controller,
  imageA: string,
  imageB: string,
  common: readonly string[],
  start: <T extends { stop(signal?: NodeJS.Signals): Promise<void> }>(p: T) => T,
  o: Options,
): Promise<FailbackReport> {
  await promoted.stopClean();
  const a = await start(
    new Controller("old primary A as secondary", ["secondary", imageA, ...common]),
  ).ready();
  const marked = (await a.admin("GET", "/status")) as { outOfSync: { tracks: number } };
  const began = performance.now();
  const b = await start(
    new Controller("promoted B as primary", [
      "primary",
      imageB,
      ...common,
      "--remote",
      `nbd://127.0.0.1:${a.port}/replication`,
      "--mode",
      "sync",
    ]),
  ).ready();
  const status = await b.waitForStatus(
    (s) => s.pairState === "full-duplex",
    "full-duplex",
    o.left(),
  );
  const resyncMs = Math.round(performance.now() - began);
  const pair = status.pair as {
    lastDecision: string | null;
    localChangedTracks: number | null;
    remoteChangedTracks: number | null;
  };
  const resync = status.resync as { lastCopiedTracks: number | null };
  const host = status.host as { size: number };
  const trackSize = Number(status.trackSize);
  o.log(`failback: B is primary again towards A, in sync after ${resyncMs} ms`);
  await b.stopClean();
  await a.stopClean();
  return {
    decision: pair.lastDecision ?? "none",
    changedOnPromoted: pair.localChangedTracks ?? 0,
    changedOnOldPrimary: pair.remoteChangedTracks ?? 0,
    oldPrimaryMarked: marked.outOfSync.tracks,
    activityLogBoundTracks: (AL_EXTENTS * AL_EXTENT_BYTES) / trackSize,
    tracksResynced: resync.lastCopiedTracks ?? 0,
    volumeTracks: Math.ceil(host.size / trackSize),
    resyncMs,
    imagesIdentical: await filesEqual(imageA, imageB),
  };
}

function describe(r: VariantReport): string {
  const lines = [
    `variant ${r.variant} (${r.variant === "nbd" ? "guest kernel NBD client via guestfwd" : "qemu NBD-backed virtio disk"}), ${r.mode} mirroring: ${r.ok ? "OK" : "FAILED"}`,
    `  guest boot ${r.bootSeconds} s, first synced batch ${r.firstSyncSeconds} s after qemu start`,
    `  before the SIGKILL: ${r.batchesSynced} batches, ${r.filesSynced} files synced`,
    `  promote ${r.promoteMs} ms after the kill; fresh guest mounted on the promoted side ${r.takeoverMs} ms later`,
    `  files present ${r.filesPresent}/${r.filesSynced}, intact ${r.filesIntact}/${r.filesSynced}; e2fsck -fn exit ${r.fsckExit}; new write ${r.newWrite ? "ok" : "FAILED"}`,
  ];
  if (r.missing.length > 0) lines.push(`  missing: ${r.missing.join(" ")}`);
  if (r.corrupt.length > 0) lines.push(`  corrupt: ${r.corrupt.join(" ")}`);
  for (const l of r.fsckLog) lines.push(`  e2fsck: ${l}`);
  const f = r.failback;
  if (f !== undefined)
    lines.push(
      `  failback: the old primary restarted with ${f.oldPrimaryMarked} tracks marked (activity-log bound ${f.activityLogBoundTracks}); ${f.decision} resync of ${f.changedOnPromoted} tracks changed on the promoted side and ${f.changedOnOldPrimary} on the old primary: ${f.tracksResynced} of ${f.volumeTracks} tracks copied in ${f.resyncMs} ms; images ${f.imagesIdentical ? "identical" : "DIFFER"}`,
    );
  return lines.join("\n");
}

export interface ExperimentOptions {
  readonly variants: readonly Variant[];
  /** Synced batches the writer reports before the host kills the primary, and files per batch. */
  readonly batches: number;
  readonly per: number;
  /** Fail back after the first variant (default true). */
  readonly failback?: boolean;
  /** Where the guest's kernel package and initramfs are kept (default .cache/vm). */
  readonly cacheDir?: string;
  /** The whole experiment's time limit, guest build included (default 10 minutes). */
  readonly timeoutMs?: number;
  readonly log?: (line: string) => void;
}

export interface ExperimentResult {
  ok: boolean;
  seconds: number;
  kernel: string;
  /** The guest was built in this run (seconds), or came from the cache (null). */
  guestBuildSeconds: number | null;
  reports: VariantReport[];
}

export async function runExperiment(options: ExperimentOptions): Promise<ExperimentResult> {
  const log = options.log ?? (() => undefined);
  const t0 = performance.now();
  const deadline = t0 + (options.timeoutMs ?? 600_000);
  const left = (): number => Math.max(1000, deadline - performance.now());
  const guest = await ensureGuest(options.cacheDir ?? join(ROOT, ".cache", "vm"), log);
  const guestBuildSeconds = guest.built ? seconds(performance.now() - t0) : null;
  log(
    `guest: Linux ${guest.kernelVersion}${guestBuildSeconds === null ? " (cached)" : ` (built in ${guestBuildSeconds} s)`}`,
  );
  const reports: VariantReport[] = [];
  for (const [i, variant] of options.variants.entries()) {
    reports.push(
      await runVariant(guest, {
        variant,
        batches: options.batches,
        per: options.per,
        // One failback shows it; the first variant does it.
        failback: options.failback !== false && i === 0,
        log,
        left,
      }),
    );
  }
  return {
    ok: reports.every((r) => r.ok),
    seconds: seconds(performance.now() - t0),
    kernel: guest.kernelVersion,
    guestBuildSeconds,
    reports,
  };
}

export function describeResult(result: ExperimentResult): string {
  return `${result.reports.map(describe).join("\n")}\nall done in ${result.seconds} s: ${result.ok ? "OK" : "FAILED"}\n`;
}

const USAGE =
  "usage: scripts/vm-experiment [--variant nbd|virtio|both] [--batches N] [--per N] [--no-failback] [--cache DIR] [--timeout SECONDS] [--json]\n" +
  "       scripts/vm-experiment --attach [--per N] [--cache DIR] [--timeout SECONDS] [--json]\n";

export function count(value: string, name: string, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > max)
    throw new Error(`--${name}: "${value}" must be a whole number from 1 to ${max}`);
  return n;
}

/**
 * The frame of a `scripts/vm-experiment` command: `parse` reads the options
 * (undefined for --help; a throw is a usage error, exit 2), `run` runs the
 * experiment (a throw is a failure, exit 1), and the report goes to stdout as
 * text or JSON; exit 0 only if every check held.
 */
export async function runCommand<O, R extends { ok: boolean }>(
  usage: string,
  parse: () => { options: O; json: boolean } | undefined,
  run: (options: O) => Promise<R>,
  describe: (result: R, options: O) => string,
): Promise<number> {
  let parsed: { options: O; json: boolean } | undefined;
  try {
    parsed = parse();
  } catch (err) {
    process.stderr.write(
      `vm-experiment: ${err instanceof Error ? err.message : String(err)}\n${usage}`,
    );
    return 2;
  }
  if (parsed === undefined) {
    process.stdout.write(usage);
    return 0;
  }
  const { options, json } = parsed;
  let result: R;
  try {
    result = await run(options);
  } catch (err) {
    // A guest or controller that failed or timed out: its own message and output tail.
    process.stderr.write(
      `vm-experiment: FAILED: ${err instanceof Error ? err.message : String(err)}\n`,
    );
    return 1;
  }
  process.stdout.write(json ? `${JSON.stringify(result)}\n` : describe(result, options));
  return result.ok ? 0 : 1;
}

/** The line-by-line progress every command writes to stderr. */
export const logLine = (line: string): void =>
  void process.stderr.write(`vm-experiment: ${line}\n`);

export function main(argv: string[]): Promise<number> {
  return runCommand(
    USAGE,
    () => {
      const { values } = parseArgs({
        args: argv,
        options: {
          variant: { type: "string", default: "both" },
          batches: { type: "string", default: "4" },
          per: { type: "string", default: "8" },
          "no-failback": { type: "boolean" },
          cache: { type: "string" },
          timeout: { type: "string", default: "600" },
          json: { type: "boolean" },
          help: { type: "boolean", short: "h" },
        },
      });
      if (values.help === true) return undefined;
      const variant = values.variant;
      if (variant !== "nbd" && variant !== "virtio" && variant !== "both")
        throw new Error(`--variant: "${variant}" is not one of nbd, virtio, both`);
      const options: ExperimentOptions = {
        variants: variant === "both" ? ["nbd", "virtio"] : [variant],
        batches: count(values.batches, "batches", 1000),
        per: count(values.per, "per", 1000),
        failback: values["no-failback"] !== true,
        timeoutMs: count(values.timeout, "timeout", 86_400) * 1000,
        log: logLine,
        ...(values.cache === undefined ? {} : { cacheDir: values.cache }),
      };
      return { options, json: values.json === true };
    },
    runExperiment,
    describeResult,
  );
}
