// Counts the requests and bytes that pass through: what a host asks of a
// controller, for the admin API's figures and the dashboard's IOPS charts.
import { Filter } from "./filter.js";
import type { Backend } from "./types.js";

export class CountingFilter extends Filter {
  reads = 0;
  writes = 0;
  readBytes = 0;
  writtenBytes = 0;
  /** Kept only when the layer below can write vectors too; else the server joins the parts. */
  declare writev?: (parts: readonly Buffer[], offset: number, flags: number) => Promise<void>;

  constructor(next: Backend) {
    super(next);
    const below = next.writev?.bind(next);
    if (below !== undefined)
      this.writev = (parts, offset, flags) => {
        this.writes++;
        for (const part of parts) this.writtenBytes += part.length;
        return below(parts, offset, flags);
      };
  }

  override read(into: Buffer, offset: number): Promise<void> {
    this.reads++;
    this.readBytes += into.length;
    return this.next.read(into, offset);
  }

  override write(data: Buffer, offset: number, flags: number): Promise<void> {
    this.writes++;
    this.writtenBytes += data.length;
    return this.next.write(data, offset, flags);
  }

  override zero(offset: number, length: number, flags: number): Promise<void> {
    this.writes++;
    this.writtenBytes += length;
    return this.next.zero(offset, length, flags);
  }

  override trim(offset: number, length: number, flags: number): Promise<void> {
    this.writes++;
    return this.next.trim(offset, length, flags);
  }
}
