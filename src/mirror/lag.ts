// How far the secondary is behind in async mode: writes acknowledged to hosts
// that the secondary has not acknowledged yet, and the bound on them. With the
// block policy the bound is kept by admission: a host write enters the mirror
// only if, counted with the lag and with the writes already admitted, it stays
// within the bound (a single write larger than the bound enters alone).
import { LagPolicy } from "./pair.js";
import type { TaskRun } from "./task-run.js";

const CHECK_INTERVAL_MS = 50;

interface Waiter {
  readonly bytes: number;
  readonly resolve: () => void;
}

export class LagTracker {
  bytes = 0;
  /** Bytes of host writes admitted and not yet acknowledged to their host. */
  private admitted = 0;
  private readonly runs = new Set<TaskRun>();
  private waiters: Waiter[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly now: () => number,
    readonly maxBytes: number | undefined,
    readonly maxMs: number | undefined,
    readonly policy: LagPolicy,
    private readonly onSuspend: () => void,
  ) {
    if (maxMs !== undefined) {
      this.timer = setInterval(() => this.check(), CHECK_INTERVAL_MS);
      this.timer.unref();
    }
  }

  get bounded(): boolean {
    return this.maxBytes !== undefined || this.maxMs !== undefined;
  }

  get writes(): number {
    return this.runs.size;
  }

  /** Age of the oldest write the secondary has not acknowledged, in ms. */
  get ms(): number {
    const oldest = this.runs.values().next();
    return oldest.done === true ? 0 : this.now() - oldest.value.ackedAt;
  }

  get exceeded(): boolean {
    return (
      (this.maxBytes !== undefined && this.bytes > this.maxBytes) ||
      (this.maxMs !== undefined && this.runs.size > 0 && this.ms > this.maxMs)
    );
  }

  /**
   * With the block policy, admits a host write of `bytes`: undefined when it may go
   * at once, else a promise that resolves when it may. Every admitted write is
   * later handed to add() or release().
   */
  admit(bytes: number): Promise<void> | undefined {
    if (this.policy !== LagPolicy.BLOCK || !this.bounded) return undefined;
    if (this.waiters.length === 0 && this.fits(bytes)) {
      this.admitted += bytes;
      return undefined;
    }
    return new Promise((resolve) => this.waiters.push({ bytes, resolve }));
  }

  /** An admitted write that will not be counted as lag (failed, or not mirrored). */
  release(bytes: number): void {
    if (this.policy !== LagPolicy.BLOCK || !this.bounded) return;
    this.admitted -= bytes;
    this.pump();
  }

  /** A host write was acknowledged and the secondary does not have it yet. */
  add(run: TaskRun): void {
    run.ackedAt = this.now();
    this.runs.add(run);
    this.bytes += run.task.length;
    if (this.policy === LagPolicy.BLOCK && this.bounded) this.admitted -= run.task.length;
    this.check();
  }

  remove(run: TaskRun): void {
    if (!this.runs.delete(run)) return;
    this.bytes -= run.task.length;
    this.pump();
  }

  clear(): void {
    this.runs.clear();
    this.bytes = 0;
    this.pump();
  }

  close(): void {
    clearInterval(this.timer);
    this.clear();
    for (const w of this.waiters.splice(0)) w.resolve();
  }

  private fits(bytes: number): boolean {
    if (this.maxMs !== undefined && this.runs.size > 0 && this.ms > this.maxMs) return false;
    if (this.maxBytes === undefined) return true;
    const used = this.bytes + this.admitted;
    return used === 0 || used + bytes <= this.maxBytes;
  }

  private check(): void {
    if (this.policy === LagPolicy.SUSPEND && this.exceeded) this.onSuspend();
    else this.pump();
  }

  /** Lets waiting writes in, in arrival order, while they fit. */
  private pump(): void {
    while (this.waiters.length > 0) {
      const next = this.waiters[0] as Waiter;
      if (!this.fits(next.bytes)) return;
      this.waiters.shift();
      this.admitted += next.bytes;
      next.resolve();
    }
  }
}
