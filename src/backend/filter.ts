// The base of every filter: each operation passes through to the layer below
// unless a subclass overrides it (nbdkit's plugin/filter stack).
import { NBD_EPERM } from "../../nbd/constants.js";
import { NbdRequestError } from "../../nbd/errors.js";
import type { Backend, BlockSizeConstraints, Capabilities, Extent } from "./types.js";

export class Filter implements Backend {
  constructor(protected readonly next: Backend) {}

  get size(): number {
    return this.next.size;
  }
  get capabilities(): Capabilities {
    return this.next.capabilities;
  }
  get blockSizes(): BlockSizeConstraints | undefined {
    return this.next.blockSizes;
  }
  read(into: Buffer, offset: number): Promise<void> {
    return this.next.read(into, offset);
  }
  write(data: Buffer, offset: number, flags: number): Promise<void> {
    return this.next.write(data, offset, flags);
  }
  flush(): Promise<void> {
    return this.next.flush();
  }
  trim(offset: number, length: number, flags: number): Promise<void> {
    return this.next.trim(offset, length, flags);
  }
  zero(offset: number, length: number, flags: number): Promise<void> {
    return this.next.zero(offset, length, flags);
  }
  cache(offset: number, length: number): Promise<void> {
    return this.next.cache(offset, length);
  }
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.next.blockStatus(offset, length);
  }
  close(): Promise<void> {
    return this.next.close();
  }
}

/** Refuses writes: what `--read-only` and a secondary's host export put on top. */
export class ReadOnlyFilter extends Filter {
  private readonly caps: Capabilities;

  constructor(next: Backend) {
    super(next);
    this.caps = { ...next.capabilities, readOnly: true };
  }

  override get capabilities(): Capabilities {
    return this.caps;
  }
  override write(_data: Buffer, _offset: number, _flags: number): Promise<void> {
    return refuse();
  }
  override trim(_offset: number, _length: number, _flags: number): Promise<void> {
    return refuse();
  }
  override zero(_offset: number, _length: number, _flags: number): Promise<void> {
    return refuse();
  }
}

function refuse(): Promise<void> {
  return Promise.reject(new NbdRequestError(NBD_EPERM, "the volume is read-only"));
}
