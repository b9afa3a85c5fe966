// One direction of an emulated link: bytes leave in the order they came, each
// chunk after the added latency (plus jitter), no faster than the bandwidth
// cap, and nothing at all while the link is frozen. With nothing to emulate
// and nothing queued a chunk is delivered at once, so a link at zero settings
// costs one function call per chunk.
import { preciseClock, type Sleeper } from "./clock.js";
import type { LinkShape } from "./settings.js";

/** A chunk of bytes, or an NBD reply the emulated far end sends in place of a dropped request. */
interface LineItem {
  readonly bytes: Buffer;
  readonly due: number;
  readonly injected: boolean;
}

export interface LineSink {
  /** Deliver bytes that are due; false: stop until resume() (backpressure). */
  deliver(bytes: Buffer, injected: boolean): boolean;
  /** Several deliveries follow (true) or are over (false): a socket corks them. */
  batch(start: boolean): void;
}

export class DelayLine implements Sleeper {
  bytes = 0;
  private readonly items: LineItem[] = [];
  private head = 0;
  private busyUntil = 0;
  private lastDue = 0;
  /** A wake-up is asked of the clock. */
  private armed = false;
  private paused = false;

  constructor(
    private readonly shape: () => LinkShape,
    private readonly sink: LineSink,
    private readonly now: () => number,
  ) {}

  get empty(): boolean {
    return this.head === this.items.length;
  }

  push(bytes: Buffer, injected = false): void {
    const s = this.shape();
    const t = this.now();
    if (
      this.empty &&
      !this.paused &&
      s.latencyMs === 0 &&
      s.jitterMs === 0 &&
      s.bandwidth === 0 &&
      s.frozenUntil <= t
    ) {
      if (!this.sink.deliver(bytes, injected)) this.paused = true;
      return;
    }
    let due = t;
    if (s.bandwidth > 0) {
      this.busyUntil = Math.max(this.busyUntil, t) + (bytes.length * 1000) / s.bandwidth;
      due = this.busyUntil;
    }
    due += s.latencyMs + (s.jitterMs > 0 ? Math.random() * s.jitterMs : 0);
    // Jitter spreads chunks out; it never lets one overtake another (the bytes are one stream).
    due = Math.max(due, this.lastDue);
    this.lastDue = due;
    this.items.push({ bytes, due, injected });
    this.bytes += bytes.length;
    if (this.head === this.items.length - 1) this.schedule();
  }

  /** The sink can take more again. */
  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.release();
  }

  /** The frozen-until time moved: look again when the head is due. */
  reschedule(): void {
    if (this.armed) preciseClock().cancel(this);
    this.armed = false;
    this.schedule();
  }

  close(): void {
    if (this.armed) preciseClock().cancel(this);
    this.armed = false;
    this.items.length = 0;
    this.head = 0;
    this.bytes = 0;
  }

  private schedule(): void {
    if (this.armed || this.paused || this.empty) return;
    const head = this.items[this.head] as LineItem;
    const at = Math.max(head.due, this.shape().frozenUntil);
    const wait = at - this.now();
    if (wait <= preciseClock().slack) {
      this.release();
      return;
    }
    this.armed = true;
    preciseClock().at(this, wait);
  }

  /** The clock's call: the head is due. */
  wake(): void {
    this.armed = false;
    this.release();
  }

  private release(): void {
    const t = this.now();
    if (this.shape().frozenUntil > t) return this.schedule();
    const items = this.items;
    const soon = t + preciseClock().slack;
    const batch = this.head + 1 < items.length && (items[this.head + 1] as LineItem).due <= soon;
    if (batch) this.sink.batch(true);
    let ok = true;
    while (ok && this.head < items.length && (items[this.head] as LineItem).due <= soon) {
      const item = items[this.head] as LineItem;
      items[this.head++] = undefined as unknown as LineItem;
      this.bytes -= item.bytes.length;
      ok = this.sink.deliver(item.bytes, item.injected);
    }
    if (batch) this.sink.batch(false);
    if (this.head === items.length) {
      items.length = 0;
      this.head = 0;
    } else if (this.head > 1024) {
      items.splice(0, this.head);
      this.head = 0;
    }
    if (!ok) {
      this.paused = true;
      return;
    }
    this.schedule();
  }
}
