// `peercopy status --watch`: the primary's status, live. On a terminal, a bar
// shows the initial copy, a resync or a verify with its rate and ETA; elsewhere
// one line per interval.
import cliProgress from "cli-progress";

interface WatchedStatus {
  pairState?: string;
  suspendReason?: string | null;
  mode?: string;
  outOfSync?: { tracks?: number; bytes?: number };
  lag?: { writes?: number; bytes?: number; ms?: number };
  link?: { state?: string; inFlight?: number; queued?: number };
  resync?: {
    running?: boolean;
    totalTracks?: number;
    copiedTracks?: number;
    bytesPerSecond?: number;
    etaSeconds?: number | null;
  };
  verify?: {
    running?: boolean;
    totalTracks?: number;
    checkedTracks?: number;
    differingTracks?: number;
    bytesPerSecond?: number;
    etaSeconds?: number | null;
  };
}

interface Job {
  readonly name: "resync" | "verify";
  readonly running: boolean;
  readonly done: number;
  readonly total: number;
  readonly bytesPerSecond: number;
  readonly etaSeconds: number | null;
}

/** What the bar follows: a running resync, else a running verify, else the resync. */
function jobOf(s: WatchedStatus): Job {
  const v = s.verify;
  if (s.resync?.running !== true && v?.running === true)
    return {
      name: "verify",
      running: true,
      done: v.checkedTracks ?? 0,
      total: v.totalTracks ?? 0,
      bytesPerSecond: v.bytesPerSecond ?? 0,
      etaSeconds: v.etaSeconds ?? null,
    };
  const r = s.resync ?? {};
  return {
    name: "resync",
    running: r.running === true,
    done: r.copiedTracks ?? 0,
    total: r.totalTracks ?? 0,
    bytesPerSecond: r.bytesPerSecond ?? 0,
    etaSeconds: r.etaSeconds ?? null,
  };
}

const MiB = 1024 * 1024;

export function summary(s: WatchedStatus): string {
  const state = s.suspendReason ? `${s.pairState} (${s.suspendReason})` : `${s.pairState}`;
  const oos = s.outOfSync ?? {};
  const lag = s.lag ?? {};
  const link = s.link ?? {};
  return (
    `${state} ${s.mode ?? ""} | out of sync ${oos.tracks ?? 0} tracks ` +
    `(${((oos.bytes ?? 0) / MiB).toFixed(1)} MiB) | lag ${lag.writes ?? 0} writes ` +
    `${((lag.bytes ?? 0) / MiB).toFixed(1)} MiB ${lag.ms ?? 0} ms | link ${link.state ?? "?"} ` +
    `in flight ${link.inFlight ?? 0} queued ${link.queued ?? 0}` +
    (s.verify?.running === true ? ` | ${s.verify.differingTracks ?? 0} tracks differ` : "")
  );
}

export async function watch(
  fetchStatus: () => Promise<unknown>,
  intervalMs: number,
  stop: Promise<void>,
): Promise<void> {
  const tty = process.stdout.isTTY;
  const bar = new cliProgress.SingleBar(
    {
      format:
        "{job} [{bar}] {percentage}% | {value}/{total} tracks | {rate} MiB/s | ETA {eta_s}s | {line}",
      hideCursor: true,
      clearOnComplete: false,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  let stopped = false;
  void stop.then(() => (stopped = true));
  while (!stopped) {
    const s = (await fetchStatus()) as WatchedStatus;
    const job = jobOf(s);
    const line = summary(s);
    if (tty) {
      const total = Math.max(1, job.total);
      const payload = {
        job: job.name,
        line,
        rate: (job.bytesPerSecond / MiB).toFixed(1),
        eta_s: job.etaSeconds ?? "?",
      };
      if (!started) bar.start(total, job.done, payload);
      else bar.setTotal(total);
      started = true;
      bar.update(job.running ? job.done : total, payload);
    } else {
      const progress = job.running ? ` | ${job.name} ${job.done}/${job.total} tracks` : "";
      process.stdout.write(`${new Date().toISOString()} ${line}${progress}\n`);
    }
    await Promise.race([new Promise((resolve) => setTimeout(resolve, intervalMs)), stop]);
  }
  if (started) bar.stop();
}
