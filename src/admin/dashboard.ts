// The admin API's live dashboard: the page at GET /, a ring of once-a-second
// samples of /status (rates computed from the counters' deltas) at
// GET /dashboard/samples, the pair state changes seen every 200 ms, and the
// out-of-sync tracks downsampled to at most a few thousand cells at
// GET /dashboard/tracks, so a 1 TiB volume still draws in one canvas.
import type http from "node:http";
import { randomUUID } from "node:crypto";
import { DASHBOARD_PAGE } from "./dashboard-page.js";

/** The out-of-sync bits: a primary's mirror.tracks or a secondary's side.bits. */
export interface MarkSource {
  readonly outOfSyncTracks: number;
  nextStale(from: number): number;
}

export interface DashboardOptions {
  status: () => Record<string, unknown>;
  marks?: MarkSource | undefined;
  /** Sampling period (default 1 s) and how many samples are kept (default 600: 10 minutes). */
  intervalMs?: number;
  keep?: number;
}

export interface Sample {
  readonly seq: number;
  /** Milliseconds since the epoch. */
  readonly t: number;
  readonly pairState: string;
  readonly hostReadIops: number;
  readonly hostWriteIops: number;
  readonly hostReadMiBps: number;
  readonly hostWriteMiBps: number;
  readonly linkMiBps: number;
  readonly lagBytes: number;
  readonly lagMs: number;
  readonly outOfSyncTracks: number;
  /** Subtasks that arrived out of order per second, and their mean wait in the interval. */
  readonly outOfOrderPerSecond: number;
  readonly waitMeanMs: number;
  readonly waitP99Ms: number;
}

export interface StateChange {
  readonly t: number;
  readonly from: string | null;
  readonly to: string;
  readonly reason: string | null;
  readonly detail: string | null;
}

const MiB = 1024 * 1024;
const DEFAULT_CELLS = 8192;
const MAX_CELLS = 65536;
const MAX_CHANGES = 200;
const STATE_MS = 200;

type Counters = Readonly<Record<string, number>>;

export class Dashboard {
  /** Changes when the controller restarts, so a page knows its history is gone. */
  readonly bootId = randomUUID();
  private readonly samples: Sample[] = [];
  private readonly changes: StateChange[] = [];
  private readonly keep: number;
  private readonly timer: NodeJS.Timeout;
  private readonly stateTimer: NodeJS.Timeout;
  private last: { t: number; c: Counters } | undefined;
  private seq = 0;
  private state: string | undefined;

  constructor(private readonly options: DashboardOptions) {
    this.keep = options.keep ?? 600;
    this.sample();
    this.timer = setInterval(() => this.sample(), options.intervalMs ?? 1000);
    this.timer.unref();
    // States can change faster than the samples: look at them more often.
    this.stateTimer = setInterval(() => this.watchState(), STATE_MS);
    this.stateTimer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    clearInterval(this.stateTimer);
  }

  /** Serves the dashboard's paths; false for any other path. */
  serve(path: string, url: URL, res: http.ServerResponse): boolean {
    if (path === "/" || path === "/dashboard") {
      res.writeHead(200, {
        "content-type": "text/html; charset=utf-8",
        "cache-control": "no-store",
      });
      res.end(DASHBOARD_PAGE);
      return true;
    }
    if (path === "/dashboard/samples") {
      const since = Number(url.searchParams.get("since") ?? "0");
      if (!Number.isSafeInteger(since) || since < 0) {
        json(res, 400, {
          error: `since must be the seq of the last sample you have (0 for all), not ${url.searchParams.get("since")}`,
        });
        return true;
      }
      json(res, 200, {
        bootId: this.bootId,
        intervalMs: this.options.intervalMs ?? 1000,
        samples: this.samples.filter((s) => s.seq > since),
        stateChanges: this.changes,
      });
      return true;
    }
    if (path === "/dashboard/tracks") {
      const wanted = Number(url.searchParams.get("cells") ?? DEFAULT_CELLS);
      if (!Number.isInteger(wanted) || wanted < 1 || wanted > MAX_CELLS) {
        json(res, 400, {
          error: `cells must be a whole number from 1 to ${MAX_CELLS}, not ${url.searchParams.get("cells")}`,
        });
        return true;
      }
      json(res, 200, this.trackMap(wanted));
      return true;
    }
    return false;
  }

  /**
   * The out-of-sync tracks grouped into at most `cells` cells of whole tracks:
   * each cell's byte is 0 when none of its tracks is marked, else 1..255 in
   * proportion to the marked share (255 only when all are).
   */
  trackMap(cells: number): Record<string, unknown> {
    const status = this.options.status();
    const size = num(obj(status.host).size);
    const trackSize = num(status.trackSize);
    const marks = this.options.marks;
    if (marks === undefined || trackSize <= 0)
      return { error: "this controller keeps no out-of-sync tracks" };
    const trackCount = Math.ceil(size / trackSize);
    const tracksPerCell = Math.max(1, Math.ceil(trackCount / cells));
    const cellCount = Math.ceil(trackCount / tracksPerCell);
    const counts = new Uint32Array(cellCount);
    let marked = 0;
    for (let t = marks.nextStale(0); t >= 0 && t < trackCount; t = marks.nextStale(t + 1)) {
      const cell = Math.floor(t / tracksPerCell);
      counts[cell] = (counts[cell] as number) + 1;
      marked++;
    }
    const data = Buffer.alloc(cellCount);
    for (let i = 0; i < cellCount; i++) {
      const n = counts[i] as number;
      if (n === 0) continue;
      const inCell = Math.min(tracksPerCell, trackCount - i * tracksPerCell);
      data[i] = n >= inCell ? 255 : Math.min(254, Math.max(1, Math.round((255 * n) / inCell)));
    }
    return {
      trackCount,
      trackSize,
      volumeSize: size,
      tracksPerCell,
      cells: cellCount,
      markedTracks: marked,
      data: data.toString("base64"),
    };
  }

  private watchState(): void {
    try {
      this.noteState(this.options.status(), Date.now());
    } catch {
      // a controller in the middle of stopping
    }
  }

  private noteState(status: Record<string, unknown>, t: number): string {
    const pairState = typeof status.pairState === "string" ? status.pairState : "unknown";
    if (pairState !== this.state) {
      this.changes.push({
        t,
        from: this.state ?? null,
        to: pairState,
        reason: typeof status.suspendReason === "string" ? status.suspendReason : null,
        detail: typeof status.stateDetail === "string" ? status.stateDetail : null,
      });
      if (this.changes.length > MAX_CHANGES) this.changes.shift();
      this.state = pairState;
    }
    return pairState;
  }

  private sample(): void {
    let status: Record<string, unknown>;
    try {
      status = this.options.status();
    } catch {
      return; // a controller in the middle of stopping: try again next time
    }
    const t = Date.now();
    const host = obj(status.host);
    const link = obj(status.link);
    const lag = obj(status.lag);
    const seq = obj(status.sequencer);
    const wait = obj(seq.waitMsSampled);
    const c: Counters = {
      reads: num(host.reads),
      writes: num(host.writes),
      readBytes: num(host.readBytes),
      writtenBytes: num(host.writtenBytes),
      sentBytes: num(link.sentBytes),
      outOfOrder: num(seq.subtasksOutOfOrder),
      waitCount: num(wait.count),
      waitSum: num(wait.sum),
    };
    const pairState = this.noteState(status, t);
    const prev = this.last;
    this.last = { t, c };
    if (prev === undefined) return;
    const secs = Math.max(0.001, (t - prev.t) / 1000);
    // A counter that went backwards (it was reset) counts as no change.
    const rate = (k: string): number => Math.max(0, (c[k] ?? 0) - (prev.c[k] ?? 0)) / secs;
    const waits = (c.waitCount ?? 0) - (prev.c.waitCount ?? 0);
    this.samples.push({
      seq: ++this.seq,
      t,
      pairState,
      hostReadIops: round(rate("reads")),
      hostWriteIops: round(rate("writes")),
      hostReadMiBps: round(rate("readBytes") / MiB),
      hostWriteMiBps: round(rate("writtenBytes") / MiB),
      linkMiBps: round(rate("sentBytes") / MiB),
      lagBytes: num(lag.bytes),
      lagMs: num(lag.ms),
      outOfSyncTracks: num(obj(status.outOfSync).tracks),
      outOfOrderPerSecond: round(rate("outOfOrder")),
      waitMeanMs: waits > 0 ? round(((c.waitSum ?? 0) - (prev.c.waitSum ?? 0)) / waits) : 0,
      waitP99Ms: round(num(wait.p99)),
    });
    if (this.samples.length > this.keep) this.samples.shift();
  }
}

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}

function num(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) ? v : 0;
}

function obj(v: unknown): Readonly<Record<string, unknown>> {
  return typeof v === "object" && v !== null ? (v as Record<string, unknown>) : {};
}

function json(res: http.ServerResponse, code: number, body: unknown): void {
  res.writeHead(code, { "content-type": "application/json", "cache-control": "no-store" });
  res.end(`${JSON.stringify(body)}\n`);
}
