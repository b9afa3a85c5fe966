// The host export of a controller whose role can change at run time: read-only
// while it is a secondary (or demoted), writable once promoted. Writes taken as
// a primary without a peer are recorded: write intent, then the tracks marked
// out of sync, so a later failback copies exactly them.
import { NBD_EPERM } from "../../nbd/constants.js";
import { NbdRequestError } from "../../nbd/errors.js";
import { Filter } from "../backend/filter.js";
import type { Backend, Capabilities } from "../backend/types.js";
import type { PairSide } from "./side.js";

export class HostGate extends Filter {
  writable = false;
  private readonly readOnlyCaps: Capabilities;

  constructor(
    next: Backend,
    private readonly side: PairSide,
    private readonly trackSize: number,
  ) {
    super(next);
    this.readOnlyCaps = { ...next.capabilities, readOnly: true };
  }

  /** Asked when a host connects: hosts that connected before a promotion reconnect to write. */
  override get capabilities(): Capabilities {
    return this.writable ? this.next.capabilities : this.readOnlyCaps;
  }

  override write(data: Buffer, offset: number, flags: number): Promise<void> {
    return this.recorded(offset, data.length, () => this.next.write(data, offset, flags));
  }

  override zero(offset: number, length: number, flags: number): Promise<void> {
    return this.recorded(offset, length, () => this.next.zero(offset, length, flags));
  }

  override trim(offset: number, length: number, flags: number): Promise<void> {
    return this.recorded(offset, length, () => this.next.trim(offset, length, flags));
  }

  private async recorded(
    offset: number,
    length: number,
    apply: () => Promise<void>,
  ): Promise<void> {
    if (!this.writable)
      throw new NbdRequestError(
        NBD_EPERM,
        "this controller is a secondary: its volume is read-only to hosts until promoted",
      );
    const first = Math.floor(offset / this.trackSize);
    const count = Math.floor((offset + length - 1) / this.trackSize) - first + 1;
    const intent = this.side.beginWrite(first, count);
    if (intent !== undefined) await intent;
    try {
      this.side.bits.markStale(first, count);
      await apply();
    } finally {
      this.side.endWrite(first, count);
    }
  }
}
