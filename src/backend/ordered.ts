// Applies writes strictly in arrival order, one after another, and makes FLUSH
// cover every write that arrived before it. The NBD server runs requests in
// flight concurrently; a replication stream needs the order it was sent in,
// because the primary keeps many dependent writes in flight on the strength of
// it. Issuing each write only after the one before it has reached the page
// cache also means a crash of this process leaves a prefix of the stream.
import { Filter } from "./filter.js";
import type { Backend } from "./types.js";

export class OrderedFilter extends Filter {
  /** The last write issued; the next one starts when it has settled. */
  private tail: Promise<void> | null = null;

  /** Kept only when the layer below can write vectors too; else the server joins the parts. */
  declare writev?: (parts: readonly Buffer[], offset: number, flags: number) => Promise<void>;

  constructor(next: Backend) {
    super(next);
    const below = next.writev?.bind(next);
    if (below !== undefined) {
      this.writev = (parts, offset, flags) => this.ordered(() => below(parts, offset, flags));
    }
  }

  override write(data: Buffer, offset: number, flags: number): Promise<void> {
    return this.ordered(() => this.next.write(data, offset, flags));
  }

  override zero(offset: number, length: number, flags: number): Promise<void> {
    return this.ordered(() => this.next.zero(offset, length, flags));
  }

  override trim(offset: number, length: number, flags: number): Promise<void> {
    return this.ordered(() => this.next.trim(offset, length, flags));
  }

  override async flush(): Promise<void> {
    const earlier = this.tail;
    if (earlier !== null) await earlier.catch(() => undefined);
    await this.next.flush();
  }

  private ordered(apply: () => Promise<void>): Promise<void> {
    const before = this.tail;
    // A write that failed does not hold back the ones after it: its error goes to its own reply.
    const done = before === null ? apply() : before.then(apply, apply);
    this.tail = done;
    const forget = (): void => {
      if (this.tail === done) this.tail = null;
    };
    done.then(forget, forget);
    return done;
  }
}
