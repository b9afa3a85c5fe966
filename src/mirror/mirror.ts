// The primary's mirror: a filter over the local volume. Every host write, zero
// or trim becomes a write data task split into track subtasks; the host stage
// writes each track to the local volume concurrently; completed subtasks go to
// the sequencer, which hands them to the link in per-task sequence order.
import { NBD_CMD_FLAG_FUA, NBD_EIO, NBD_EPERM } from "../../nbd/constants.js";
import { NbdRequestError } from "../../nbd/errors.js";
import type { Logger } from "../../nbd/logger.js";
import { Filter } from "../backend/filter.js";
import type { Backend, Capabilities } from "../backend/types.js";
import { TaskPlanner, type Subtask, type TaskRequest } from "../sequencer/plan.js";
import { Sequencer } from "../sequencer/sequencer.js";
import type { NbdClient } from "../../nbd/client/index.js";
import {
  Link,
  LinkEntryKind,
  LinkState,
  type LinkConfigError,
  type LinkConnect,
  type LinkEntry,
} from "./link.js";
import { divergeFrom, SyncDecision } from "../pair/generations.js";
import { onConnect, onInSync, onRelease, type ConnectOutcome } from "../pair/handshake.js";
import { MemorySide, newGeneration, Role, type PairSide } from "../pair/side.js";
import { LagPolicy, LinkLossPolicy, MirrorMode, PairState, SuspendReason } from "./pair.js";
import { TaskRun } from "./task-run.js";
import { TrackState } from "./tracks.js";
import { LagTracker } from "./lag.js";
import { Resync } from "./resync.js";
import { Verify } from "./verify.js";
import { PayloadPool } from "./payload-pool.js";

export interface MirrorOptions {
  remote: string;
  mode: MirrorMode;
  trackSize?: number;
  maxLagBytes?: number;
  maxLagMs?: number;
  onLag?: LagPolicy;
  onLinkLoss?: LinkLossPolicy;
  ordered?: "auto" | "yes" | "no";
  /** Where the out-of-sync bits and the pair record live (default: memory only). */
  side?: PairSide;
  /** The operator allows overwriting the remote's own changes (split brain, unrelated). */
  discardRemote?: boolean;
  /** Resync rate limit in bytes per second (0: none). */
  resyncRate?: number;
  /** Makes the link's connections (the link emulator); default: a plain connection. */
  linkConnect?: LinkConnect;
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
  readonly side: PairSide;
  state: PairState = PairState.SIMPLEX;
  suspendReason: SuspendReason | undefined;
  /** Why the pair is not mirroring when no suspension explains it (split brain, configuration). */
  stateDetail: string | undefined;
  /** What the last connection's generation comparison found. */
  lastConnect: ConnectOutcome | undefined;
  discardRemote: boolean;
  /** Host writes are refused (demoted). */
  demoted = false;
  /** What the host export advertises once demoted: read-only (see capabilities). */
  private demotedCaps: Capabilities | undefined;
  private diverging: Promise<void> | undefined;
  hostWriteErrors = 0;
  hostReadErrors = 0;
  /** The local volume failed a read for a resync copy. */
  resyncReadErrors = 0;
  private readonly runs = new Map<number, TaskRun>();
  /** Where payloads that arrived in pieces are gathered while mirrored. */
  readonly payloads = new PayloadPool();
  /** Runs whose subtasks are not all dispatched: a later task on their tracks waits. */
  private readonly undispatched = new Set<TaskRun>();
  private hostAckCounter = 0;
  /** Every host-acknowledged task with ackNo <= watermark is on the secondary. */
  private watermark = 0;
  private readonly doneAcks = new Set<number>();
  private readonly resync: Resync;
  /** Online verify (peercopy verify): compares both sides while hosts write. */
  readonly verify: Verify;
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
    this.side = options.side ?? new MemorySide(local.size, this.planner.trackSize, Role.PRIMARY);
    this.discardRemote = options.discardRemote ?? false;
    // What the remote needs is decided when it is reached (see pair/handshake.ts).
    this.tracks = new TrackState(local.size, this.planner.trackSize, this.side.bits);
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
      connect: options.linkConnect,
      events: {
        acked: (e) => this.acked(e),
        lost: (err, abandoned) => this.linkLost(err, abandoned),
        connected: () => this.linkUp(),
        barrierReached: (b) => this.watermark >= b,
        accept: (client, controlPage) => this.accept(client, controlPage),
        misconfigured: (err) => this.misconfigured(err),
      },
    });
    this.resync = new Resync(this, local, this.logger, options.resyncRate ?? 0);
    this.verify = new Verify(this, local, options.remote, this.logger);
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

  override read(into: Buffer, offset: number): Promise<void> {
    return this.next.read(into, offset).catch(this.readFailed);
  }

  /** A host read the local volume failed: the host gets the error, as from a plain disk. */
  private readonly readFailed = (err: unknown): never => {
    this.hostReadErrors++;
    throw err;
  };

  override write(data: Buffer, offset: number, flags: number): Promise<void> {
    return this.submit({ kind: "write", offset, data, flags }, undefined);
  }

  /** A payload that arrived in pieces: gathered into pooled memory, given back once written everywhere. */
  writev(parts: readonly Buffer[], offset: number, flags: number): Promise<void> {
    let length = 0;
    for (const part of parts) length += part.length;
    const pooled = this.payloads.gather(parts, length);
    return this.submit({ kind: "write", offset, data: pooled.subarray(0, length), flags }, pooled);
  }

  override zero(offset: number, length: number, flags: number): Promise<void> {
    return this.submit({ kind: "zero", offset, length, flags }, undefined);
  }

  override trim(offset: number, length: number, flags: number): Promise<void> {
    return this.submit({ kind: "trim", offset, length, flags }, undefined);
  }

  /**
   * sync: the local volume is synced and the secondary answered a FLUSH sent after
   * every acknowledged write. async: the local volume is synced; the FLUSH goes
   * down the link in stream order.
   */
  override async flush(): Promise<void> {
    if (!this.mirroring || this.link.state === LinkState.STOPPED) return this.next.flush();
    const remote = this.remoteFlush();
    await this.next.flush();
    if (this.mode === MirrorMode.SYNC) await remote;
  }

  /** Operator, lag or local disk: stop mirroring, keep every affected track marked. */
  suspend(reason: SuspendReason, detail?: string): void {
    if (this.state === PairState.SUSPENDED) return;
    // The state changes first: abandoning settles host writes, which must not re-enter here.
    this.setState(PairState.SUSPENDED, reason, detail);
    this.abandonAll(this.link.dropQueued());
  }

  /** Mirror again: copy the marked tracks, then full duplex. */
  resume(): void {
    if (this.state === PairState.FULL_DUPLEX) return this.resyncMarked();
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
    await this.verify.stop();
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
    const inSync =
      drained &&
      this.link.queued === 0 &&
      this.state === PairState.FULL_DUPLEX &&
      this.tracks.outOfSyncTracks === 0;
    await this.release(inSync);
    await this.link.stop();
    return drained && this.link.queued === 0;
  }

  /** Tell a peercopy secondary this primary lets go, so it can be promoted without waiting. */
  private async release(inSync: boolean): Promise<void> {
    const client = this.link.connection;
    if (client === null || this.link.state !== "up" || !this.link.controlPage) return;
    this.link.stopHeartbeat();
    try {
      await onRelease(client, this.side, inSync);
    } catch (err) {
      this.logger.warn(
        { err: (err as Error).message },
        "could not tell the secondary this primary stopped; promoting it will wait for the primary's silence",
      );
    }
  }

  /**
   * Demoted, the export says it is read-only: hosts that connect from then on are
   * told at negotiation (NBD_FLAG_READ_ONLY), and those already connected get EPERM.
   */
  override get capabilities(): Capabilities {
    if (!this.demoted) return this.next.capabilities;
    return (this.demotedCaps ??= { ...this.next.capabilities, readOnly: true });
  }

  // --- the host stage ---

  private async submit(request: TaskRequest, pooled: Buffer | undefined): Promise<void> {
    if (this.demoted || !this.mirroring)
      return this.releasedAfter(
        this.demoted ? Promise.reject(demotedError()) : this.unmirroredWithIntent(request),
        pooled,
      );
    const length = request.kind === "write" ? request.data.length : request.length;
    const gate = this.lag.admit(length);
    if (gate !== undefined) await gate;
    const task = this.planner.plan(request);
    if (this.blockerOf(task.firstSeq, task.count) !== undefined) {
      await this.waitForTracks(task.firstSeq, task.count);
    }
    // Write intent: the tracks count as out of sync after a crash from here on.
    const intent = this.side.beginWrite(task.firstSeq, task.count);
    if (intent !== undefined) await intent;
    if (!this.mirroring) {
      this.side.endWrite(task.firstSeq, task.count);
      this.lag.release(length);
      return this.releasedAfter(this.unmirrored(request), pooled);
    }
    return new Promise<void>((resolve, reject) => {
      const run = new TaskRun(task, this.hostAckCounter, resolve, reject, false);
      run.pooled = pooled;
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
    if (!run.resync) {
      if (this.resync.running) this.resync.touch(firstSeq, count);
      this.verify.touch(firstSeq, count);
    }
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

  tracksBusy(first: number, count: number): boolean {
    return this.blockerOf(first, count) !== undefined;
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
      if (run.resync) this.resyncReadErrors++;
      else this.hostWriteErrors++;
      this.abandonRun(run);
    }
    if (run.localLeft === 0) this.localComplete(run);
  }

  /** A write that does not go to the secondary: its pooled payload goes back once it settled. */
  private releasedAfter(done: Promise<void>, pooled: Buffer | undefined): Promise<void> {
    if (pooled === undefined) return done;
    return done.finally(() => this.payloads.release(pooled));
  }

  /** The payload's pooled memory goes back once the local volume and the link are done with it. */
  private payloadDone(run: TaskRun): void {
    const pooled = run.pooled;
    if (pooled === undefined || run.localLeft !== 0 || run.remoteLeft > 0) return;
    run.pooled = undefined;
    this.payloads.release(pooled);
  }

  private localComplete(run: TaskRun): void {
    this.payloadDone(run);
    if (run.localError !== undefined) {
      this.settleHost(run, run.localError);
      // What the disk holds on those tracks is unknown, and the secondary may have part of
      // the write: copy them again from the local volume, so both sides agree on it.
      if (!run.resync && this.state === PairState.FULL_DUPLEX) this.startResync();
      return;
    }
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

  private async unmirroredWithIntent(request: TaskRequest): Promise<void> {
    const length = request.kind === "write" ? request.data.length : request.length;
    const size = this.planner.trackSize;
    const first = Math.floor(request.offset / size);
    const count = Math.floor((request.offset + length - 1) / size) - first + 1;
    const intent = this.side.beginWrite(first, count);
    if (intent !== undefined) await intent;
    try {
      await this.unmirrored(request);
    } finally {
      this.side.endWrite(first, count);
    }
  }

  /**
   * While not mirroring, a host write goes to the local volume and marks its tracks.
   * The caller holds the write intent for the tracks.
   */
  private async unmirrored(request: TaskRequest): Promise<void> {
    if (this.onLinkLoss === LinkLossPolicy.FAIL && this.suspendReason === SuspendReason.LINK)
      throw new NbdRequestError(
        NBD_EIO,
        "the link to the secondary is down and --on-link-loss is fail",
      );
    // The first write the remote does not get starts a new generation (DRBD's new current UUID).
    if (this.side.state.generations.bitmap === 0n) await this.diverge();
    const length = request.kind === "write" ? request.data.length : request.length;
    const size = this.planner.trackSize;
    const first = Math.floor(request.offset / size);
    this.tracks.markStale(first, Math.floor((request.offset + length - 1) / size) - first + 1);
    const flags = request.flags ?? 0;
    const done =
      request.kind === "write"
        ? this.next.write(request.data, request.offset, flags)
        : request.kind === "zero"
          ? this.next.zero(request.offset, length, flags)
          : this.next.trim(request.offset, length, flags);
    return done.catch(this.writeFailed);
  }

  private readonly writeFailed = (err: unknown): never => {
    this.hostWriteErrors++;
    throw err;
  };

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
    if (--run.remoteLeft === 0) {
      this.payloadDone(run);
      this.remoteComplete(run);
    }
  }

  private remoteComplete(run: TaskRun): void {
    this.retire(run);
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
      this.payloadDone(run);
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
      this.payloadDone(run);
    }
    run.abandoned = true;
    this.retire(run);
    this.undispatched.delete(run);
    run.wakeDispatchWaiters();
    if (run.localLeft === 0) this.localComplete(run);
  }

  /** A run leaves the books: its write intent ends (its tracks are on the remote or marked). */
  private retire(run: TaskRun): void {
    if (this.runs.delete(run.task.taskId)) this.side.endWrite(run.task.firstSeq, run.task.count);
  }

  private diverge(): Promise<void> {
    this.diverging ??= this.side
      .update({ generations: divergeFrom(this.side.state.generations, newGeneration()) })
      .finally(() => (this.diverging = undefined));
    return this.diverging;
  }

  private async accept(client: NbdClient, controlPage: boolean): Promise<"mirror" | "refuse"> {
    const found = await onConnect({
      client,
      controlPage,
      side: this.side,
      tracks: this.tracks,
      discardRemote: this.discardRemote,
      logger: this.logger,
    });
    this.lastConnect = found;
    const log = {
      decision: found.decision,
      localChangedTracks: found.localTracks,
      remoteChangedTracks: found.remoteTracks,
      outOfSyncTracks: this.tracks.outOfSyncTracks,
    };
    if (found.action === "refuse") {
      this.logger.error(log, found.reason);
      if (found.remote?.role === "primary")
        this.setState(PairState.SUSPENDED, SuspendReason.PEER_PROMOTED, found.reason);
      else if (found.decision === SyncDecision.SPLIT_BRAIN)
        this.setState(PairState.SPLIT_BRAIN, undefined, found.reason);
      else this.setState(PairState.SUSPENDED, SuspendReason.CONFLICT, found.reason);
      return "refuse";
    }
    this.logger.info(log, "pair generations compared");
    if (this.discardRemote) this.discardRemote = false;
    return "mirror";
  }

  private misconfigured(err: LinkConfigError): void {
    this.setState(PairState.SUSPENDED, SuspendReason.CONFIG, err.message);
  }

  /** Let a refused link try again, overwriting the remote's changes if `discardRemote`. */
  resolve(discardRemote: boolean): void {
    this.discardRemote = discardRemote;
    this.link.retry();
  }

  private linkUp(): void {
    if (
      this.state === PairState.SIMPLEX ||
      this.state === PairState.SPLIT_BRAIN ||
      this.suspendReason === SuspendReason.LINK ||
      this.suspendReason === SuspendReason.PEER_PROMOTED ||
      this.suspendReason === SuspendReason.CONFLICT
    )
      this.startResync();
  }

  /** A resync could not read a track from the local volume: the pair cannot be whole. */
  localDiskFailed(track: number, err: Error): void {
    if (!this.mirroring) return;
    this.logger.error(
      { track, err: err.message },
      "the local volume failed a read for the resync; mirroring is suspended until peercopy resume",
    );
    this.suspend(
      SuspendReason.LOCAL_DISK,
      `the local volume cannot read track ${track} for the resync: ${err.message}`,
    );
  }

  /** Copy the tracks marked while mirroring (by verify): full duplex again once done. */
  resyncMarked(): void {
    if (this.state === PairState.FULL_DUPLEX && this.tracks.outOfSyncTracks > 0) this.startResync();
  }

  private startResync(): void {
    if (this.resync.running) return;
    this.setState(PairState.DUPLEX_PENDING, undefined);
    void this.resync.run().then(async (complete) => {
      if (!complete || this.state !== PairState.DUPLEX_PENDING) return;
      const client = this.link.connection;
      if (client === null) return;
      try {
        await onInSync(client, this.link.controlPage, this.side);
      } catch (err) {
        // The link failed under the command: the next connection compares again.
        this.logger.warn({ err: (err as Error).message }, "could not record the pair in sync");
        return;
      }
      if (this.state === PairState.DUPLEX_PENDING) this.setState(PairState.FULL_DUPLEX, undefined);
    });
  }

  setState(state: PairState, reason: SuspendReason | undefined, detail?: string): void {
    if (this.state === state && this.suspendReason === reason) return;
    this.stateDetail = detail;
    this.logger.info(
      { from: this.state, to: state, reason, detail, outOfSyncTracks: this.tracks.outOfSyncTracks },
      "pair state",
    );
    this.state = state;
    this.suspendReason = reason;
  }
}

function demotedError(): NbdRequestError {
  return new NbdRequestError(NBD_EPERM, "this controller was demoted; it takes no host writes");
}
