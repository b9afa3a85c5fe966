// The primary's mirror: a filter over the local volume. Every host write, zero
// or trim becomes a write data task split into track subtasks; the host stage
// writes each track to the local volume concurrently; completed subtasks go to
// the sequencer, which hands them to the link in per-task sequence order.
import { NBD_CMD_FLAG_FUA, NBD_EIO } from "../../nbd/constants.js";
import { NbdRequestError } from "../../nbd/errors.js";
import type { Logger } from "../../nbd/logger.js";
import { Filter } from "../backend/filter.js";
import type { Backend } from "../backend/types.js";
import { TaskPlanner, type Subtask, type TaskRequest } from "../sequencer/plan.js";
import { Sequencer } from "../sequencer/sequencer.js";
import { Link, LinkEntryKind, type LinkEntry } from "./link.js";
import { LagPolicy, LinkLossPolicy, MirrorMode, PairState, SuspendReason } from "./pair.js";
import { TaskRun } from "./task-run.js";
import { TrackState } from "./tracks.js";
import { LagTracker } from "./lag.js";
import { Resync } from "./resync.js";

export interface MirrorOptions {
  remote: string;
  mode: MirrorMode;
  trackSize?: number;
  maxLagBytes?: number;
  maxLagMs?: number;
  onLag?: LagPolicy;
  onLinkLoss?: LinkLossPolicy;
  ordered?: "auto" | "yes" | "no";
  logger: Logger;
  now?: () => number;
}

interface FlushWaiter {
  resolve: () => void;
}

export class MirrorFilter extends Filter {
  readonly mode: MirrorMode;
  readonly planner: TaskPlanner;
  readonly tracks: TrackState;
  readonly sequencer: Sequencer<Subtask>;
  readonly link: Link;
  readonly lag: LagTracker;
  state: PairState = PairState.SIMPLEX;
  suspendReason: SuspendReason | undefined;
  hostWriteErrors = 0;
  private readonly runs = new Map<number, TaskRun>();
  /** Runs whose subtasks are not all dispatched: a later task on their tracks waits. */
  private readonly undispatched = new Set<TaskRun>();
  private hostAckCounter = 0;
  /** Every host-acknowledged task with ackNo <= watermark is on the secondary. */
  private watermark = 0;
  private readonly doneAcks = new Set<number>();
  private readonly resync: Resync;
  private readonly logger: Logger;
  private readonly onLinkLoss: LinkLossPolicy;
  private readonly now: () => number;

  constructor(
    local: Backend,
    private readonly options: MirrorOptions,
  ) {
    super(local);
    this.mode = options.mode;
    this.logger = options.logger;
    this.onLinkLoss = options.onLinkLoss ?? LinkLossPolicy.SUSPEND;
    this.now = options.now ?? performance.now.bind(performance);
    this.planner = new TaskPlanner({ trackSize: options.trackSize });
    this.tracks = new TrackState(local.size, this.planner.trackSize);
    // Nothing is known of the secondary yet: every track needs the initial copy.
    this.tracks.markStale(0, this.tracks.trackCount);
    this.sequencer = new Sequencer<Subtask>({ dispatch: (s) => this.dispatch(s), now: this.now });
    this.lag = new LagTracker(
      this.now,
      options.maxLagBytes,
      options.maxLagMs,
      options.onLag ?? LagPolicy.BLOCK,
      () => this.suspend(SuspendReason.LAG),
    );
    this.link = new Link({
      remote: options.remote,
      size: local.size,
      logger: this.logger,
      ordered: options.ordered,
      events: {
        acked: (e) => this.acked(e),
        lost: (err, abandoned) => this.linkLost(err, abandoned),
        connected: () => this.linkUp(),
        barrierReached: (b) => this.watermark >= b,
      },
    });
    this.resync = new Resync(this, local, this.logger);
  }

  get mirroring(): boolean {
    return this.state === PairState.FULL_DUPLEX || this.state === PairState.DUPLEX_PENDING;
  }

  get resyncProgress(): Resync {
    return this.resync;
  }

  async start(): Promise<void> {
    await this.link.start();
  }

  override write(data: Buffer, offset: number, flags: number): Promise<void> {
    return this.submit({ kind: "write", offset, data, flags });
  }

  override zero(offset: number, length: number, flags: number): Promise<void> {
    return this.submit({ kind: "zero", offset, length, flags });
  }

  override trim(offset: number, length: number, flags: number): Promise<void> {
    return this.submit({ kind: "trim", offset, length, flags });
  }

  /**
   * sync: the local volume is synced and the secondary answered a FLUSH sent after
   * every acknowledged write. async: the local volume is synced; the FLUSH goes
   * down the link in stream order.
   */
  override async flush(): Promise<void> {
    if (!this.mirroring) return this.next.flush();
    const remote = this.remoteFlush();
    await this.next.flush();
    if (this.mode === MirrorMode.SYNC) await remote;
  }

  /** Operator or lag: stop mirroring, keep every affected track marked. */
  suspend(reason: SuspendReason): void {
    if (this.state === PairState.SUSPENDED) return;
    // The state changes first: abandoning settles host writes, which must not re-enter here.
    this.setState(PairState.SUSPENDED, reason);
    this.abandonAll(this.link.dropQueued());
  }

  /** Mirror again: copy the marked tracks, then full duplex. */
  resume(): void {
    if (this.state !== PairState.SUSPENDED && this.state !== PairState.SIMPLEX) return;
    if (this.link.state !== "up") {
      this.logger.warn({ state: this.link.state }, "resume waits for the link to come up");
      this.suspendReason = SuspendReason.LINK;
      return;
    }
    this.startResync();
  }

  /** Clean stop: wait for the link to drain (bounded), flush both sides, disconnect. */
  async stop(timeoutMs: number): Promise<boolean> {
    this.resync.stop();
    let drained = true;
    if (this.link.state === "up") {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), timeoutMs)));
      drained = await Promise.race([this.link.idle().then(() => true), timeout]);
      clearTimeout(timer);
      if (drained && this.mirroring) await this.remoteFlush();
    }
    await this.next.flush();
    await this.link.stop();
    return drained && this.link.queued === 0;
  }

  // --- the host stage ---

  private async submit(request: TaskRequest): Promise<void> {
    if (!this.mirroring) return this.unmirrored(request);
    const length = request.kind === "write" ? request.data.length : request.length;
    const gate = this.lag.admit(length);
    if (gate !== undefined) await gate;
    const task = this.planner.plan(request);
    if (this.blockerOf(task.firstSeq, task.count) !== undefined) {
      await this.waitForTracks(task.firstSeq, task.count);
    }
    if (!this.mirroring) {
      this.lag.release(length);
      return this.unmirrored(request);
    }
    return new Promise<void>((resolve, reject) => {
      const run = new TaskRun(task, this.hostAckCounter, resolve, reject, false);
      this.begin(run);
      for (const sub of task.subtasks) {
        this.localOp(sub).then(
          () => this.localDone(run, sub),
          (err: unknown) => this.localFailed(run, err as Error),
        );
      }
    });
  }

  /** Registers a run with the tracks, the sequencer and the overlap lock. */
  begin(run: TaskRun): void {
    const { taskId, firstSeq, count } = run.task;
    this.tracks.addPending(firstSeq, count);
    this.sequencer.begin(taskId, firstSeq, count);
    this.runs.set(taskId, run);
    this.undispatched.add(run);
    if (!run.resync && this.resync.running) this.resync.touch(firstSeq, count);
  }

  /** Track ranges [first, end) of the writes not yet on the secondary. */
  *activeTrackRanges(): IterableIterator<[number, number]> {
    for (const r of this.runs.values()) yield [r.firstTrack, r.endTrack];
  }

  /** A later task on a track waits until the earlier one is fully dispatched, so the
   *  secondary receives a track's writes in the order the local volume took them. */
  async waitForTracks(first: number, count: number): Promise<void> {
    for (let blocker = this.blockerOf(first, count); blocker !== undefined;) {
      await blocker.whenDispatched();
      blocker = this.blockerOf(first, count);
    }
  }

  private blockerOf(first: number, count: number): TaskRun | undefined {
    for (const r of this.undispatched) {
      if (r.firstTrack < first + count && first < r.endTrack) return r;
    }
    return undefined;
  }

  private localOp(sub: Subtask): Promise<void> {
    const local = this.next;
    if (sub.data !== undefined)
      return local.write(sub.data, sub.offset, sub.flags & NBD_CMD_FLAG_FUA);
    if (sub.kind === "zero") return local.zero(sub.offset, sub.length, sub.flags);
    return local.trim(sub.offset, sub.length, sub.flags);
  }

  /** The first processor finished a subtask: queue it with the sequencer. */
  localDone(run: TaskRun, sub: Subtask): void {
    run.localLeft--;
    if (!run.abandoned && run.localError === undefined) this.sequencer.add(sub);
    if (run.localLeft === 0) this.localComplete(run);
  }

  /** The first processor failed a subtask: the task ends, its tracks stay marked. */
  localFailed(run: TaskRun, err: Error): void {
    run.localLeft--;
    if (run.localError === undefined) {
      run.localError = err;
      this.hostWriteErrors++;
      this.abandonRun(run);
    }
    if (run.localLeft === 0) this.localComplete(run);
  }

  private localComplete(run: TaskRun): void {
    if (run.localError !== undefined) return this.settleHost(run, run.localError);
    if (run.abandoned) {
      if (this.onLinkLoss === LinkLossPolicy.FAIL && this.suspendReason === SuspendReason.LINK)
        return this.settleHost(
          run,
          new NbdRequestError(NBD_EIO, "the link to the secondary is down"),
        );
      return this.settleHost(run, undefined);
    }
    // A resync copy counts only once the secondary has it.
    if ((this.mode === MirrorMode.ASYNC && !run.resync) || run.remoteLeft === 0)
      this.settleHost(run, undefined);
  }

  /** While not mirroring, a host write goes to the local volume and marks its tracks. */
  private async unmirrored(request: TaskRequest): Promise<void> {
    if (this.onLinkLoss === LinkLossPolicy.FAIL && this.suspendReason === SuspendReason.LINK)
      throw new NbdRequestError(
        NBD_EIO,
        "the link to the secondary is down and --on-link-loss is fail",
      );
    const length = request.kind === "write" ? request.data.length : request.length;
    const size = this.planner.trackSize;
    const first = Math.floor(request.offset / size);
    this.tracks.markStale(first, Math.floor((request.offset + length - 1) / size) - first + 1);
    if (request.kind === "write")
      return this.next.write(request.data, request.offset, request.flags ?? 0);
    if (request.kind === "zero") return this.next.zero(request.offset, length, request.flags ?? 0);
    return this.next.trim(request.offset, length, request.flags ?? 0);
  }

  // --- the sequencer's output and the link ---

  private dispatch(sub: Subtask): void {
    const run = this.runs.get(sub.taskId) as TaskRun;
    run.dispatched++;
    if (run.fullyDispatched) {
      this.undispatched.delete(run);
      run.wakeDispatchWaiters();
    }
    this.link.enqueue({
      kind: LinkEntryKind.SUBTASK,
      subtask: sub,
      barrier: run.barrier,
      owner: run,
    });
  }

  private acked(entry: LinkEntry): void {
    if (entry.kind === LinkEntryKind.FLUSH) return (entry.owner as FlushWaiter).resolve();
    const run = entry.owner as TaskRun;
    const sub = entry.subtask as Subtask;
    this.tracks.releasePending(sub.seq, false);
    if (--run.remoteLeft === 0) this.remoteComplete(run);
  }

  private remoteComplete(run: TaskRun): void {
    this.runs.delete(run.task.taskId);
    if (run.ackNo !== 0) {
      this.lag.remove(run);
      this.markDone(run.ackNo);
    } else if (run.localLeft === 0 && !run.hostSettled) {
      this.settleHost(run, undefined); // sync: both sides have it
    }
  }

  private settleHost(run: TaskRun, err: Error | undefined): void {
    if (run.hostSettled) return;
    run.hostSettled = true;
    if (run.resync) return this.resync.settled(run, err);
    if (err !== undefined) {
      this.lag.release(run.task.length);
      return run.reject(err);
    }
    run.ackNo = ++this.hostAckCounter;
    if (run.remoteLeft === 0 || run.abandoned) {
      this.lag.release(run.task.length);
      this.markDone(run.ackNo);
    } else {
      this.lag.add(run);
    }
    run.resolve();
  }

  private markDone(ackNo: number): void {
    if (ackNo <= this.watermark) return;
    if (ackNo !== this.watermark + 1) {
      this.doneAcks.add(ackNo);
      return;
    }
    this.watermark = ackNo;
    while (this.doneAcks.delete(this.watermark + 1)) this.watermark++;
  }

  private remoteFlush(): Promise<void> {
    return new Promise<void>((resolve) => {
      const waiter: FlushWaiter = { resolve };
      this.link.enqueue({
        kind: LinkEntryKind.FLUSH,
        subtask: undefined,
        barrier: this.hostAckCounter,
        owner: waiter,
      });
    });
  }

  // --- failures ---

  private linkLost(err: Error, abandoned: LinkEntry[]): void {
    // An operator's suspension outlasts the link: reconnecting must not resume it.
    const operator = this.suspendReason === SuspendReason.OPERATOR;
    this.setState(
      PairState.SUSPENDED,
      operator ? SuspendReason.OPERATOR : SuspendReason.LINK,
      err.message,
    );
    this.abandonAll(abandoned);
  }

  /** Everything not yet on the secondary stays marked; its runs finish locally. */
  private abandonAll(entries: LinkEntry[]): void {
    for (const e of entries) {
      if (e.kind === LinkEntryKind.FLUSH) {
        (e.owner as FlushWaiter).resolve();
        continue;
      }
      const run = e.owner as TaskRun;
      this.tracks.releasePending((e.subtask as Subtask).seq, true);
      run.abandoned = true;
      run.remoteLeft--;
    }
    for (const run of [...this.runs.values()]) this.abandonRun(run);
    this.lag.clear();
    // Whatever was acknowledged is now on the secondary or marked out of sync.
    this.watermark = this.hostAckCounter;
    this.doneAcks.clear();
  }

  private abandonRun(run: TaskRun): void {
    const range = this.sequencer.fail(run.task.taskId);
    if (range !== undefined) {
      for (let t = range.from; t < range.to; t++) this.tracks.releasePending(t, true);
      run.remoteLeft -= range.to - range.from;
    }
    run.abandoned = true;
    this.runs.delete(run.task.taskId);
    this.undispatched.delete(run);
    run.wakeDispatchWaiters();
    if (run.localLeft === 0) this.localComplete(run);
  }

  private linkUp(): void {
    if (this.state === PairState.SIMPLEX || this.suspendReason === SuspendReason.LINK)
      this.startResync();
  }

  private startResync(): void {
    if (this.resync.running) return;
    this.setState(PairState.DUPLEX_PENDING, undefined);
    void this.resync.run().then((complete) => {
      if (complete && this.state === PairState.DUPLEX_PENDING)
        this.setState(PairState.FULL_DUPLEX, undefined);
    });
  }

  setState(state: PairState, reason: SuspendReason | undefined, detail?: string): void {
    if (this.state === state && this.suspendReason === reason) return;
    this.logger.info(
      { from: this.state, to: state, reason, detail, outOfSyncTracks: this.tracks.outOfSyncTracks },
      "pair state",
    );
    this.state = state;
    this.suspendReason = reason;
  }
}
