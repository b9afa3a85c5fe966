// Applies writes in arrival order where they overlap, and makes FLUSH cover
// every write that arrived before it. The NBD server runs requests in flight
// concurrently; a replication stream needs the order it was sent in, because
// the primary keeps many dependent writes in flight on the strength of it.
import { Filter } from "./filter.js";
import type { Backend } from "./types.js";

interface Op {
  readonly start: number;
  readonly end: number;
  readonly done: Promise<void>;
}

export class OrderedFilter extends Filter {
  private readonly inFlight = new Set<Op>();

  override write(data: Buffer, offset: number, flags: number): Promise<void> {
    return this.ordered(offset, data.length, () => this.next.write(data, offset, flags));
  }

  /** Kept only when the layer below can write vectors too; else the server joins the parts. */
  declare writev?: (parts: readonly Buffer[], offset: number, flags: number) => Promise<void>;

  constructor(next: Backend) {
    super(next);
    const below = next.writev?.bind(next);
    if (below !== undefined) {
      this.writev = (parts, offset, flags) => {
        const length = parts.reduce((sum, p) => sum + p.length, 0);
        return this.ordered(offset, length, () => below(parts, offset, flags));
      };
    }
  }

  override zero(offset: number, length: number, flags: number): Promise<void> {
    return this.ordered(offset, length, () => this.next.zero(offset, length, flags));
  }

  override trim(offset: number, length: number, flags: number): Promise<void> {
    return this.ordered(offset, length, () => this.next.trim(offset, length, flags));
  }

  override async flush(): Promise<void> {
    const earlier = [...this.inFlight].map((op) => op.done);
    await Promise.allSettled(earlier);
    await this.next.flush();
  }

  private ordered(offset: number, length: number, apply: () => Promise<void>): Promise<void> {
    const end = offset + length;
    let before: Promise<unknown>[] | undefined;
    for (const op of this.inFlight) {
      if (op.start < end && offset < op.end) (before ??= []).push(op.done);
    }
    const done = before === undefined ? apply() : Promise.allSettled(before).then(apply);
    const op: Op = { start: offset, end, done };
    this.inFlight.add(op);
    const forget = (): void => {
      this.inFlight.delete(op);
    };
    done.then(forget, forget);
    return done;
  }
}
