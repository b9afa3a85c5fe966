// How far the secondary is behind in async mode: writes acknowledged to hosts
// that the secondary has not acknowledged yet, and the bound on them.
import { LagPolicy } from "./pair.js";
import type { TaskRun } from "./task-run.js";

const CHECK_INTERVAL_MS = 50;

export class LagTracker {
  bytes = 0;
  private readonly runs = new Set<TaskRun>();
  private waiters: (() => void)[] = [];
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

  /** With the block policy, a promise to wait on before taking a new host write. */
  admit(): Promise<void> | undefined {
    if (this.policy !== LagPolicy.BLOCK || !this.exceeded) return undefined;
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  add(run: TaskRun): void {
    run.ackedAt = this.now();
    this.runs.add(run);
    this.bytes += run.task.length;
    this.check();
  }

  remove(run: TaskRun): void {
    if (!this.runs.delete(run)) return;
    this.bytes -= run.task.length;
    if (this.waiters.length > 0 && !this.exceeded) this.wake();
  }

  clear(): void {
    this.runs.clear();
    this.bytes = 0;
    this.wake();
  }

  close(): void {
    clearInterval(this.timer);
    this.clear();
  }

  private check(): void {
    if (this.policy === LagPolicy.SUSPEND && this.exceeded) this.onSuspend();
    else if (this.waiters.length > 0 && !this.exceeded) this.wake();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}
