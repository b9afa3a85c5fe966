// `peercopy status --watch`: the primary's status, live. On a terminal, a bar
// shows the initial copy or resync with its rate and ETA; elsewhere one line
// per interval.
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
    `in flight ${link.inFlight ?? 0} queued ${link.queued ?? 0}`
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
        "resync [{bar}] {percentage}% | {value}/{total} tracks | {rate} MiB/s | ETA {eta_s}s | {line}",
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
    const r = s.resync ?? {};
    const line = summary(s);
    if (tty) {
      const total = Math.max(1, r.totalTracks ?? 0);
      const payload = {
        line,
        rate: ((r.bytesPerSecond ?? 0) / MiB).toFixed(1),
        eta_s: r.etaSeconds ?? "?",
      };
      if (!started) bar.start(total, r.copiedTracks ?? 0, payload);
      else bar.setTotal(total);
      started = true;
      bar.update(r.running === true ? (r.copiedTracks ?? 0) : total, payload);
    } else {
      const progress =
        r.running === true ? ` | resync ${r.copiedTracks ?? 0}/${r.totalTracks ?? 0} tracks` : "";
      process.stdout.write(`${new Date().toISOString()} ${line}${progress}\n`);
    }
    await Promise.race([new Promise((resolve) => setTimeout(resolve, intervalMs)), stop]);
  }
  if (started) bar.stop();
}
