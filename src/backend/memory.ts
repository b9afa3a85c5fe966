// A RAM volume stored in fixed-size pages allocated on first write, so a large
// --memory size costs only what is written. Coherent across connections.
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from "../../nbd/constants.js";
import type { Backend, Capabilities, Extent } from "./types.js";

const PAGE = 64 * 1024;

export class MemoryBackend implements Backend {
  readonly capabilities: Capabilities;
  private readonly pages = new Map<number, Buffer>();

  constructor(
    readonly size: number,
    readOnly = false,
  ) {
    this.capabilities = {
      readOnly,
      flush: true,
      fua: true,
      trim: true,
      zero: true,
      fastZero: true,
      cache: true,
      blockStatus: true,
      multiConn: true,
    };
  }

  /** Bytes of RAM held by written pages. */
  get allocated(): number {
    return this.pages.size * PAGE;
  }

  read(into: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < into.length) {
      const at = offset + done;
      const index = Math.floor(at / PAGE);
      const within = at - index * PAGE;
      const n = Math.min(PAGE - within, into.length - done);
      const page = this.pages.get(index);
      if (page === undefined) into.fill(0, done, done + n);
      else page.copy(into, done, within, within + n);
      done += n;
    }
    return Promise.resolve();
  }

  write(data: Buffer, offset: number, _flags: number): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const at = offset + done;
      const index = Math.floor(at / PAGE);
      const within = at - index * PAGE;
      const n = Math.min(PAGE - within, data.length - done);
      let page = this.pages.get(index);
      if (page === undefined) {
        page = Buffer.alloc(PAGE);
        this.pages.set(index, page);
      }
      data.copy(page, within, done, done + n);
      done += n;
    }
    return Promise.resolve();
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  trim(offset: number, length: number, _flags: number): Promise<void> {
    return this.zero(offset, length, 0);
  }

  /** Whole pages are dropped (a hole); partial pages are zeroed in place. */
  zero(offset: number, length: number, _flags: number): Promise<void> {
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const index = Math.floor(at / PAGE);
      const within = at - index * PAGE;
      const n = Math.min(PAGE - within, end - at);
      if (n === PAGE) this.pages.delete(index);
      else this.pages.get(index)?.fill(0, within, within + n);
      at += n;
    }
    return Promise.resolve();
  }

  cache(_offset: number, _length: number): Promise<void> {
    return Promise.resolve();
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    const extents: Extent[] = [];
    let at = offset;
    const end = Math.min(offset + length, this.size);
    while (at < end) {
      const index = Math.floor(at / PAGE);
      const n = Math.min((index + 1) * PAGE, end) - at;
      const flags = this.pages.has(index) ? 0 : NBD_STATE_HOLE | NBD_STATE_ZERO;
      const last = extents[extents.length - 1];
      if (last !== undefined && last.flags === flags && last.length + n <= 0x8000_0000)
        last.length += n;
      else extents.push({ length: n, flags });
      at += n;
    }
    return Promise.resolve(extents);
  }

  close(): Promise<void> {
    this.pages.clear();
    return Promise.resolve();
  }
}
