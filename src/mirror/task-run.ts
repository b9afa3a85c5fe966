import type { WriteTask } from "../sequencer/plan.js";

/** What the primary knows about one write data task while it is in flight. */
export class TaskRun {
  localLeft: number;
  remoteLeft: number;
  dispatched = 0;
  /** Order in which hosts were told this task completed (0: not yet). */
  ackNo = 0;
  ackedAt = 0;
  hostSettled = false;
  /** The link was lost or mirroring suspended: no more of it goes to the secondary. */
  abandoned = false;
  localError: Error | undefined;
  /** The pooled buffer the payload was gathered into, given back once nothing reads it. */
  pooled: Buffer | undefined;
  private dispatchWaiters: (() => void)[] | undefined;

  constructor(
    readonly task: WriteTask,
    /** hostAckCounter when the task was issued: the acknowledged writes it depends on. */
    readonly barrier: number,
    readonly resolve: () => void,
    readonly reject: (err: Error) => void,
    /** A resync copy rather than a host write. */
    readonly resync: boolean,
  ) {
    this.localLeft = task.count;
    this.remoteLeft = task.count;
  }

  get firstTrack(): number {
    return this.task.firstSeq;
  }

  get endTrack(): number {
    return this.task.firstSeq + this.task.count;
  }

  get fullyDispatched(): boolean {
    return this.abandoned || this.dispatched === this.task.count;
  }

  /** Resolves when every subtask was handed to the link (or the task was abandoned). */
  whenDispatched(): Promise<void> {
    if (this.fullyDispatched) return Promise.resolve();
    return new Promise((resolve) => (this.dispatchWaiters ??= []).push(resolve));
  }

  wakeDispatchWaiters(): void {
    const waiters = this.dispatchWaiters;
    if (waiters === undefined) return;
    this.dispatchWaiters = undefined;
    for (const w of waiters) w();
  }
}
