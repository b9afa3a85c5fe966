// Wake-ups with sub-millisecond aim, for the link emulator's delay lines.
// setTimeout counts whole milliseconds (a 1.7 ms delay fires after 1 ms, or
// after 2), too coarse for a link of 1 ms: every delay would come out up to a
// millisecond long. Here one worker thread sleeps in Atomics.wait until the
// earliest wake-up and then wakes the event loop with a message. Wake-ups
// still arrive a little late (a thread switch, a busy loop), so the clock
// learns by how much and aims that much earlier: delays come out right on
// average instead of always long. Without worker threads it falls back to
// setTimeout.
import { Worker } from "node:worker_threads";

export interface Sleeper {
  /** Called on the event loop once the time asked for has come (or very nearly). */
  wake(): void;
}

const WORKER = `
const { workerData, parentPort } = require("node:worker_threads");
const gen = new Int32Array(workerData, 0, 1);
const due = new Float64Array(workerData, 8, 1);
const now = () => performance.timeOrigin + performance.now();
for (;;) {
  const g = Atomics.load(gen, 0);
  const at = due[0];
  if (at === Infinity) { Atomics.wait(gen, 0, g); continue; }
  const wait = at - now();
  if (wait > 0) { Atomics.wait(gen, 0, g, wait); continue; }
  due[0] = Infinity;
  parentPort.postMessage(0);
}`;

/** The most the clock aims early, in ms: lateness beyond this is a busy machine, not a habit. */
const MAX_LEAD_MS = 0.5;

class PreciseClock {
  /** How much earlier than asked the worker is told to wake (learnt), in ms. */
  lead = 0.1;
  private readonly sleepers = new Map<Sleeper, number>();
  private readonly gen: Int32Array;
  private readonly due: Float64Array;
  private worker: Worker | undefined;
  private fallback: NodeJS.Timeout | undefined;
  /** When the worker was told to wake (epoch ms); Infinity: not armed. */
  private target = Infinity;

  constructor() {
    const shared = new SharedArrayBuffer(16);
    this.gen = new Int32Array(shared, 0, 1);
    this.due = new Float64Array(shared, 8, 1);
    this.due[0] = Infinity;
    try {
      this.worker = new Worker(WORKER, { eval: true, workerData: shared });
      this.worker.unref();
      this.worker.on("message", this.tick);
      this.worker.on("error", () => (this.worker = undefined));
    } catch {
      this.worker = undefined;
    }
  }

  /**
   * What is due this soon counts as due now: wake-ups come up to about `lead`
   * early, and one that came early and slept again would come late.
   */
  get slack(): number {
    return Math.max(MIN_SLACK_MS, this.lead);
  }

  /** Wake `sleeper` in `delayMs` (replacing a wake-up it asked for before). */
  at(sleeper: Sleeper, delayMs: number): void {
    this.sleepers.set(sleeper, now() + delayMs);
    this.arm();
  }

  cancel(sleeper: Sleeper): void {
    this.sleepers.delete(sleeper);
  }

  private arm(): void {
    let first = Infinity;
    for (const at of this.sleepers.values()) if (at < first) first = at;
    if (first === Infinity) return;
    const target = first - this.lead;
    if (target >= this.target) return;
    this.target = target;
    if (this.worker === undefined) {
      clearTimeout(this.fallback);
      this.fallback = setTimeout(this.tick, Math.max(0, target - now()));
      return;
    }
    this.due[0] = target;
    Atomics.add(this.gen, 0, 1);
    Atomics.notify(this.gen, 0);
  }

  private readonly tick = (): void => {
    const t = now();
    if (this.target !== Infinity) {
      // Learn how late wake-ups come; aim that much earlier next time.
      const late = t - this.target;
      this.lead = Math.min(MAX_LEAD_MS, Math.max(0, this.lead + (late - this.lead) / 16));
    }
    this.target = Infinity;
    for (const [sleeper, at] of this.sleepers) {
      if (at > t + this.slack) continue;
      this.sleepers.delete(sleeper);
      sleeper.wake();
    }
    this.arm();
  };
}

const MIN_SLACK_MS = 0.05;

function now(): number {
  return performance.timeOrigin + performance.now();
}

let clock: PreciseClock | undefined;

/** The one clock of the process, started on first use. */
export function preciseClock(): Pick<PreciseClock, "at" | "cancel" | "slack"> {
  clock ??= new PreciseClock();
  return clock;
}
