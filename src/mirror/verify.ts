// Online verify: compares the two volumes track by track while hosts go on
// writing, marks the tracks that differ out of sync and (unless told not to)
// copies them. With a peercopy secondary each side hashes its own tracks (the
// "peercopy:checksum" metadata context), so no data crosses the link; with any
// other NBD server the remote's tracks are read and hashed here.
//
// A track is only compared when no host write to it was in flight between the
// local read and the remote's answer: writes not yet on the remote are still in
// the mirror's books (activeTrackRanges), and writes begun during the window are
// reported through touch(). Such tracks are tried again later; the ones that
// stay busy are counted, never reported as equal or different.
import type { Logger } from "../../nbd/logger.js";
import { connectUri, type NbdClient } from "../../nbd/client/index.js";
import type { Backend } from "../backend/types.js";
import { CHECKSUM_CONTEXT, CHECKSUM_SPAN_TRACKS, trackChecksum } from "../pair/checksums.js";
import { readPairRecord } from "../pair/handshake.js";
import { ORDERED_STREAM_DESCRIPTION } from "./link.js";
import type { MirrorFilter } from "./mirror.js";

const PROGRESS_INTERVAL_MS = 5000;
/** Passes over the tracks that were busy, before they are counted as not compared. */
const BUSY_RETRIES = 5;
/** Differences logged one by one; the rest are in the summary. */
const LOGGED_DIFFERENCES = 20;
/** Track numbers kept in the result for status and the CLI. */
const LISTED_DIFFERENCES = 1000;

export type VerifyMethod = "checksums" | "reads";

export interface VerifyResult {
  readonly complete: boolean;
  /** Why it stopped early (link lost, mirroring suspended, stopped). */
  readonly stoppedBecause: string | null;
  readonly method: VerifyMethod;
  readonly checkedTracks: number;
  readonly differingTracks: number;
  /** The first differing track numbers, ascending. */
  readonly differing: readonly number[];
  /** Written to all through the run: neither found equal nor different. */
  readonly busyTracks: number;
  /** Already marked out of sync: the next resync copies them anyway. */
  readonly markedTracks: number;
  readonly seconds: number;
  readonly resync: boolean;
}

export interface VerifyStart {
  /** Copy the differing tracks when done (default true). */
  readonly resync: boolean;
  /** Bytes per second of volume compared; 0 for no limit. */
  readonly rateLimit: number;
}

export class Verify {
  running = false;
  method: VerifyMethod = "reads";
  totalTracks = 0;
  checkedTracks = 0;
  checkedBytes = 0;
  differing: number[] = [];
  differingTracks = 0;
  busyTracks = 0;
  markedTracks = 0;
  startedAt = 0;
  rateLimit = 0;
  last: VerifyResult | null = null;
  private stopReason: string | undefined;
  private watched: { first: number; end: number; touched: Set<number> } | undefined;
  private done: Promise<void> = Promise.resolve();

  constructor(
    private readonly mirror: MirrorFilter,
    private readonly local: Backend,
    private readonly remote: string,
    private readonly logger: Logger,
  ) {}

  /** Bytes of volume compared per second since the start. */
  get rate(): number {
    const seconds = (performance.now() - this.startedAt) / 1000;
    return seconds > 0 ? this.checkedBytes / seconds : 0;
  }

  get eta(): number | undefined {
    const rate = this.rate;
    const left = this.local.size - this.checkedBytes;
    return rate > 0 ? Math.max(0, left) / rate : undefined;
  }

  /** A host write began on these tracks. */
  touch(first: number, count: number): void {
    const w = this.watched;
    if (w === undefined || first >= w.end || first + count <= w.first) return;
    const from = Math.max(first, w.first);
    const to = Math.min(first + count, w.end);
    for (let t = from; t < to; t++) w.touched.add(t);
  }

  /** Starts a verify in the background; throws if one runs or the pair is not mirroring. */
  start(options: VerifyStart): { totalTracks: number } {
    if (this.running) throw new Error("a verify is already running; watch it with peercopy status");
    if (!this.mirror.mirroring || this.mirror.link.state !== "up")
      throw new Error(
        `verify compares a mirroring pair: the pair is ${this.mirror.state} and the link ${this.mirror.link.state}; wait for the link to come up, or peercopy resume a suspended pair`,
      );
    this.running = true;
    this.stopReason = undefined;
    this.rateLimit = options.rateLimit;
    this.totalTracks = this.mirror.tracks.trackCount;
    this.checkedTracks = 0;
    this.checkedBytes = 0;
    this.differing = [];
    this.differingTracks = 0;
    this.busyTracks = 0;
    this.markedTracks = 0;
    this.startedAt = performance.now();
    this.done = this.run(options.resync).finally(() => (this.running = false));
    return { totalTracks: this.totalTracks };
  }

  /** Stops a running verify (a clean stop of the controller); resolves when it has. */
  stop(reason = "the controller is stopping"): Promise<void> {
    this.stopReason ??= reason;
    return this.done;
  }

  private active(): boolean {
    if (this.stopReason !== undefined) return false;
    if (!this.mirror.mirroring) this.stopReason = `mirroring stopped (${this.mirror.state})`;
    return this.stopReason === undefined;
  }

  private async run(resync: boolean): Promise<void> {
    let client: NbdClient | undefined;
    const progress = setInterval(() => this.logProgress(), PROGRESS_INTERVAL_MS);
    progress.unref();
    try {
      client = await connectUri(this.remote, {
        timeoutMs: 5000,
        metaContexts: [CHECKSUM_CONTEXT],
      });
      const trackSize = this.mirror.planner.trackSize;
      this.method = await this.methodFor(client, trackSize);
      this.logger.info(
        { tracks: this.totalTracks, method: this.method, rateLimit: this.rateLimit },
        "verify started",
      );
      await this.compareAll(client, trackSize);
    } catch (err) {
      this.stopReason ??= `the remote failed: ${(err as Error).message}`;
    } finally {
      clearInterval(progress);
      client?.destroy();
    }
    await this.finish(resync);
  }

  private async methodFor(client: NbdClient, trackSize: number): Promise<VerifyMethod> {
    if (
      client.negotiated.description !== ORDERED_STREAM_DESCRIPTION ||
      !client.metaContexts.has(CHECKSUM_CONTEXT)
    )
      return "reads";
    const record = await readPairRecord(client);
    return record.trackSize === trackSize ? "checksums" : "reads";
  }

  private async compareAll(client: NbdClient, trackSize: number): Promise<void> {
    const count = this.totalTracks;
    const localBuf = Buffer.allocUnsafe(CHECKSUM_SPAN_TRACKS * trackSize);
    const remoteBuf = this.method === "reads" ? Buffer.allocUnsafe(localBuf.length) : undefined;
    let busy: number[] = [];
    for (let first = 0; first < count && this.active(); first += CHECKSUM_SPAN_TRACKS) {
      const end = Math.min(first + CHECKSUM_SPAN_TRACKS, count);
      busy.push(...(await this.compareSpan(client, trackSize, first, end, localBuf, remoteBuf)));
    }
    // Tracks that were being written: one at a time, a few more times.
    for (let pass = 0; pass < BUSY_RETRIES && busy.length > 0 && this.active(); pass++) {
      const again: number[] = [];
      for (const t of busy) {
        if (!this.active()) break;
        again.push(...(await this.compareSpan(client, trackSize, t, t + 1, localBuf, remoteBuf)));
      }
      busy = again;
    }
    this.busyTracks = busy.length;
  }

  /** Compares tracks [first, end); returns the ones written meanwhile. */
  private async compareSpan(
    client: NbdClient,
    trackSize: number,
    first: number,
    end: number,
    localBuf: Buffer,
    remoteBuf: Buffer | undefined,
  ): Promise<number[]> {
    await this.pace();
    const size = this.local.size;
    const from = first * trackSize;
    const to = Math.min(end * trackSize, size);
    const touched = new Set<number>();
    this.watched = { first, end, touched };
    for (const [a, b] of this.mirror.activeTrackRanges()) this.touch(a, b - a);
    const local = localBuf.subarray(0, to - from);
    let remoteSums: number[];
    try {
      await this.local.read(local, from);
      remoteSums = await this.remoteSums(client, trackSize, from, to, remoteBuf);
    } finally {
      this.watched = undefined;
    }
    const busy: number[] = [];
    for (let t = first; t < end; t++) {
      const at = t * trackSize - from;
      const bytes = Math.min(trackSize, size - t * trackSize);
      if (this.mirror.tracks.isStale(t)) {
        this.markedTracks++;
      } else if (touched.has(t)) {
        busy.push(t);
        continue;
      } else if (trackChecksum(local.subarray(at, at + bytes)) !== remoteSums[t - first]) {
        this.differ(t);
      }
      this.checkedTracks++;
      this.checkedBytes += bytes;
    }
    return busy;
  }

  private async remoteSums(
    client: NbdClient,
    trackSize: number,
    from: number,
    to: number,
    remoteBuf: Buffer | undefined,
  ): Promise<number[]> {
    const sums: number[] = [];
    if (remoteBuf !== undefined) {
      const data = remoteBuf.subarray(0, to - from);
      await client.read(data, from);
      for (let at = 0; at < data.length; at += trackSize)
        sums.push(trackChecksum(data.subarray(at, Math.min(at + trackSize, data.length))));
      return sums;
    }
    // One extent per track; a server may answer fewer than asked: ask again from there.
    for (let at = from; at < to;) {
      const extents = await client.blockStatusOf(CHECKSUM_CONTEXT, at, to - at);
      if (extents.length === 0) throw new Error("the remote's checksum reply was empty");
      for (const e of extents) {
        const track = Math.floor(at / trackSize);
        if (e.length <= 0 || Math.floor((Math.min(at + e.length, to) - 1) / trackSize) !== track)
          throw new Error("the remote's checksum extents do not follow its tracks");
        sums[track - from / trackSize] = e.flags >>> 0;
        at += e.length;
        if (at >= to) break;
      }
    }
    return sums;
  }

  private differ(track: number): void {
    this.mirror.tracks.markStale(track, 1);
    this.differingTracks++;
    if (this.differing.length < LISTED_DIFFERENCES) this.differing.push(track);
    if (this.differingTracks <= LOGGED_DIFFERENCES)
      this.logger.warn(
        { track, offset: track * this.mirror.planner.trackSize },
        "verify: the track differs on the secondary; marked out of sync",
      );
  }

  private async pace(): Promise<void> {
    if (this.rateLimit <= 0) return;
    const due = this.startedAt + (this.checkedBytes / this.rateLimit) * 1000;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, Math.min(wait, 60_000)));
  }

  private logProgress(): void {
    const eta = this.eta;
    this.logger.info(
      {
        checkedTracks: this.checkedTracks,
        totalTracks: this.totalTracks,
        differingTracks: this.differingTracks,
        mibPerSecond: Math.round((this.rate / 1048576) * 10) / 10,
        etaSeconds: eta === undefined ? null : Math.round(eta),
      },
      "verify progress",
    );
  }

  private async finish(resync: boolean): Promise<void> {
    const complete = this.stopReason === undefined;
    const result: VerifyResult = {
      complete,
      stoppedBecause: this.stopReason ?? null,
      method: this.method,
      checkedTracks: this.checkedTracks,
      differingTracks: this.differingTracks,
      differing: this.differing,
      busyTracks: this.busyTracks,
      markedTracks: this.markedTracks,
      seconds: Math.round((performance.now() - this.startedAt) / 100) / 10,
      resync: resync && this.differingTracks > 0,
    };
    this.last = result;
    // The marks outlive a crash from here on, whatever happens next.
    if (this.differingTracks > 0)
      await this.mirror.side
        .flushBits()
        .catch((err: unknown) =>
          this.logger.error(
            { err: (err as Error).message },
            "verify: could not write the marks to the metadata",
          ),
        );
    const { differing: _, ...summary } = result;
    this.logger.info(
      { ...summary, firstDiffering: this.differing.slice(0, LOGGED_DIFFERENCES) },
      complete
        ? this.differingTracks === 0 && this.busyTracks === 0
          ? "verify finished: no track compared differs"
          : "verify finished"
        : "verify stopped before the end",
    );
    if (result.resync) this.mirror.resyncMarked();
  }
}
