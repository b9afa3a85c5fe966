// Copies the tracks marked out of sync to the secondary, in ascending track
// order, through the same sequencer and link as host writes. Tracks the local
// volume reports as reading zeros go as WRITE_ZEROES instead of data.
import { NBD_STATE_ZERO } from "../../nbd/constants.js";
import type { Logger } from "../../nbd/logger.js";
import type { Backend } from "../backend/types.js";
import { TaskRun } from "./task-run.js";
import type { MirrorFilter } from "./mirror.js";

const WINDOW = 32;
const STATUS_SPAN = 256 * 1024 * 1024;
const MAX_TOUCHED = 65536;
const PROGRESS_INTERVAL_MS = 5000;

export class Resync {
  running = false;
  totalTracks = 0;
  copiedTracks = 0;
  copiedBytes = 0;
  zeroTracks = 0;
  startedAt = 0;
  /** Tracks copied by the last resync that ran to its end (what a restart cost). */
  lastCopiedTracks: number | null = null;
  private stopped = false;
  private outstanding = new Set<Promise<void>>();
  /** Cached block status: [start, end) pairs of zero ranges within [extentsStart, extentsEnd). */
  private zeroRanges: number[] = [];
  private extentsStart = 0;
  private extentsEnd = 0;
  private readonly touched = new Set<number>();

  /** Bytes per second the copy may use; 0 for no limit. Changeable while it runs. */
  rateLimit: number;
  /** When the next copy may start under the rate limit (performance.now() ms). */
  private nextSlot = 0;

  constructor(
    private readonly mirror: MirrorFilter,
    private readonly local: Backend,
    private readonly logger: Logger,
    rateLimit: number,
  ) {
    this.rateLimit = rateLimit;
  }

  /** Bytes per second since this resync started. */
  get rate(): number {
    const seconds = (performance.now() - this.startedAt) / 1000;
    return seconds > 0 ? this.copiedBytes / seconds : 0;
  }

  /** Seconds left at the current rate, or undefined before there is a rate. */
  get eta(): number | undefined {
    const left = this.mirror.tracks.outOfSyncBytes;
    const rate = this.rate;
    return rate > 0 ? left / rate : undefined;
  }

  stop(): void {
    this.stopped = true;
  }

  /** True when every track is in sync; false when mirroring stopped first. */
  async run(): Promise<boolean> {
    if (this.running) return false;
    this.running = true;
    this.stopped = false;
    this.startedAt = performance.now();
    this.totalTracks = this.mirror.tracks.outOfSyncTracks;
    this.copiedTracks = 0;
    this.copiedBytes = 0;
    this.zeroTracks = 0;
    this.extentsEnd = this.extentsStart;
    this.logger.info({ tracks: this.totalTracks }, "resync started");
    const progress = setInterval(() => {
      const eta = this.eta;
      this.logger.info(
        {
          copiedTracks: this.copiedTracks,
          totalTracks: this.totalTracks,
          outOfSyncTracks: this.mirror.tracks.outOfSyncTracks,
          mibPerSecond: Math.round((this.rate / 1048576) * 10) / 10,
          etaSeconds: eta === undefined ? null : Math.round(eta),
        },
        "resync progress",
      );
    }, PROGRESS_INTERVAL_MS);
    progress.unref();
    try {
      const tracks = this.mirror.tracks;
      while (this.active() && tracks.outOfSyncTracks > 0) {
        for (let t = tracks.nextStale(0); t >= 0 && this.active(); t = tracks.nextStale(t + 1)) {
          if (this.outstanding.size >= WINDOW) await Promise.race(this.outstanding);
          await this.pace();
          await this.mirror.waitForTracks(t, 1);
          if (!this.active() || !tracks.isStale(t)) continue;
          const copy = this.copyTrack(t);
          this.outstanding.add(copy);
          void copy.finally(() => this.outstanding.delete(copy));
        }
        await Promise.all(this.outstanding);
      }
      const done = this.active() && tracks.outOfSyncTracks === 0;
      if (done) this.lastCopiedTracks = this.copiedTracks;
      const seconds = ((performance.now() - this.startedAt) / 1000).toFixed(1);
      this.logger.info(
        { copiedTracks: this.copiedTracks, zeroTracks: this.zeroTracks, seconds, complete: done },
        "resync finished",
      );
      return done;
    } finally {
      clearInterval(progress);
      this.running = false;
    }
  }

  /** Spaces copies out so that they stay under the rate limit (a token bucket of one track). */
  private async pace(): Promise<void> {
    if (this.rateLimit <= 0) return;
    const now = performance.now();
    const wait = this.nextSlot - now;
    this.nextSlot =
      Math.max(now, this.nextSlot) + (this.mirror.planner.trackSize / this.rateLimit) * 1000;
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  }

  private active(): boolean {
    return !this.stopped && this.mirror.mirroring;
  }

  private async copyTrack(track: number): Promise<void> {
    const size = this.mirror.planner.trackSize;
    const offset = track * size;
    const length = Math.min(size, this.local.size - offset);
    await this.ensureStatus(offset);
    await this.mirror.waitForTracks(track, 1);
    if (!this.active() || !this.mirror.tracks.isStale(track)) return;
    // Write intent before the bit is cleared: a crash until the remote has the copy re-marks it.
    const intent = this.mirror.side.beginWrite(track, 1);
    if (intent !== undefined) await intent;
    if (this.blockedAfterIntent(track)) return this.mirror.side.endWrite(track, 1);
    // From here to begin() nothing awaits, so no host write can slip in between.
    const zero = this.readsAsZeros(track, offset, length);
    const data = zero ? undefined : Buffer.allocUnsafe(length);
    const task = this.mirror.planner.plan(
      data === undefined ? { kind: "zero", offset, length } : { kind: "write", offset, data },
    );
    await new Promise<void>((resolve) => {
      const run = new TaskRun(task, 0, resolve, () => resolve(), true);
      // Cleared before the read: a host write after it is ordered after this copy by
      // the track lock, so the secondary receives it as well.
      this.mirror.tracks.clearStale(track);
      this.mirror.begin(run);
      const sub = task.subtasks[0];
      if (sub === undefined) return resolve();
      const read = data === undefined ? Promise.resolve() : this.local.read(data, offset);
      read.then(
        () => this.mirror.localDone(run, sub),
        (err: unknown) => this.mirror.localFailed(run, err as Error),
      );
    });
  }

  /** The track changed hands while the intent was being written: leave it to the next pass. */
  private blockedAfterIntent(track: number): boolean {
    return !this.active() || !this.mirror.tracks.isStale(track) || this.mirror.tracksBusy(track, 1);
  }

  /** A host write began on these tracks: their cached block status may be stale. */
  touch(first: number, count: number): void {
    if (count > MAX_TOUCHED || this.touched.size > MAX_TOUCHED) this.extentsEnd = this.extentsStart;
    else for (let t = first; t < first + count; t++) this.touched.add(t);
  }

  /**
   * Asks the local volume which ranges read as zeros, many tracks at a time, since
   * the copy walks in ascending order. Tracks with host writes in flight at the time
   * of the query, or begun after it, are not trusted to the answer.
   */
  private async ensureStatus(offset: number): Promise<void> {
    if (offset >= this.extentsStart && offset < this.extentsEnd) return;
    const span = Math.min(this.local.size - offset, STATUS_SPAN);
    this.touched.clear();
    for (const [first, end] of this.mirror.activeTrackRanges()) this.touch(first, end - first);
    const ranges: number[] = [];
    let at = offset;
    for (const e of await this.local.blockStatus(offset, span)) {
      if ((e.flags & NBD_STATE_ZERO) !== 0) ranges.push(at, at + e.length);
      at += e.length;
    }
    this.zeroRanges = ranges;
    this.extentsStart = offset;
    this.extentsEnd = Math.min(at, offset + span);
  }

  private readsAsZeros(track: number, offset: number, length: number): boolean {
    const end = offset + length;
    if (offset < this.extentsStart || end > this.extentsEnd || this.touched.has(track))
      return false;
    const r = this.zeroRanges;
    for (let i = 0; i < r.length; i += 2) {
      if ((r[i] as number) <= offset && end <= (r[i + 1] as number)) return true;
    }
    return false;
  }

  /** Called when a resync run finished: copied, or abandoned (its track is marked again). */
  settled(run: TaskRun, err: Error | undefined): void {
    if (run.localError !== undefined && !this.stopped) {
      // Reading the track again would fail again: stop, and the pair says why.
      this.stopped = true;
      const failed = run.localError;
      queueMicrotask(() => this.mirror.localDiskFailed(run.task.firstSeq, failed));
    }
    if (err === undefined && !run.abandoned) {
      this.copiedTracks++;
      this.copiedBytes += run.task.length;
      if (run.task.kind === "zero") this.zeroTracks++;
    }
    run.resolve();
  }
}
