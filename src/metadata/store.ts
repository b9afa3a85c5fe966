// Pair metadata kept in a file beside the volume (see layout.ts for the bytes).
// All I/O runs one job at a time in call order, so a flush that resolves has
// made durable every page dirty when it was called, whoever wrote it.
import { ActivityLog, type AlSink } from "./activity-log.js";
import { StaleBitmap } from "./bitmap.js";
import { MetadataError, REINIT_ADVICE } from "./errors.js";
import { checkPairId } from "./generation.js";
import {
  type AlRecord,
  type Geometry,
  type HeaderPatch,
  MetaFlag,
  type MetaHeader,
  PAGE_SIZE,
  decodeAl,
  decodeHeader,
  encodeAl,
  encodeHeader,
  geometry,
} from "./layout.js";
import type { MetaIo, PairMetadata, Recovered } from "./types.js";

const noop = (): void => {};

/** Writes a new, empty metadata image: bitmap zero, empty AL, header clean and fresh. */
export async function formatMetadata(
  io: MetaIo,
  g: Geometry,
  header: Omit<MetaHeader, "seq">,
): Promise<void> {
  const zero = Buffer.alloc(Math.min(g.bitmapPages * PAGE_SIZE, 1 << 20));
  for (let o = 0; o < g.bitmapPages * PAGE_SIZE; o += zero.length)
    await io.write(
      zero.subarray(0, Math.min(zero.length, g.bitmapPages * PAGE_SIZE - o)),
      g.bitmapOffset + o,
    );
  await io.write(Buffer.alloc(2 * g.alSlotSize), g.alOffset);
  await io.write(encodeAl({ seq: 1, extents: [] }, g.alSlotSize), g.alOffset);
  await io.write(Buffer.alloc(PAGE_SIZE), PAGE_SIZE);
  await io.write(encodeHeader({ ...header, seq: 1 }), 0);
  await io.sync();
}

function pickNewest<T extends { seq: number }>(
  a: T | undefined,
  b: T | undefined,
): [T, number] | undefined {
  if (a !== undefined && (b === undefined || a.seq >= b.seq)) return [a, 0];
  if (b !== undefined) return [b, 1];
  return undefined;
}

export class FileMetadata implements PairMetadata {
  readonly trackCount: number;
  private readonly bits: StaleBitmap;
  private readonly al: ActivityLog;
  private tail: Promise<void> = Promise.resolve();
  private closed = false;
  recovered: Recovered = { crashed: false, alTracks: 0, bitmapTracks: 0 };

  private constructor(
    private readonly io: MetaIo,
    readonly path: string,
    private readonly g: Geometry,
    private hdr: MetaHeader,
    private headerSlot: number,
    private alRecord: AlRecord,
    private alSlot: number,
  ) {
    this.trackCount = g.trackCount;
    this.bits = new StaleBitmap(g.volumeSize, g.trackSize, g.trackCount);
    const sink: AlSink = {
      schedule: (job) => void this.run(job).catch(noop),
      writeBitmapPages: (pages) => this.writePages(pages),
      writeTransaction: (extents) => this.writeTransaction(extents),
    };
    this.al = new ActivityLog(g, sink);
  }

  /** Reads the metadata from `io`, replays the activity log after a crash, and
   * durably clears the clean flag so a crash from now on is detected. */
  static async load(
    io: MetaIo,
    path: string,
    want: { volumeSize: number; trackSize: number },
  ): Promise<FileMetadata> {
    const corrupt = (what: string): MetadataError =>
      new MetadataError("EMETA_CORRUPT", `metadata ${path}: ${what}; ${REINIT_ADVICE}`);
    const hb = Buffer.alloc(2 * PAGE_SIZE);
    await readAt(io, path, hb, 0);
    const slots = [decodeHeader(hb.subarray(0, PAGE_SIZE)), decodeHeader(hb.subarray(PAGE_SIZE))];
    const newest = pickNewest(
      ...(slots.map((d) => (d.ok ? d.value : undefined)) as [MetaHeader?, MetaHeader?]),
    );
    if (newest === undefined) {
      const v = slots.find((d) => !d.ok && d.reason === "version");
      if (v !== undefined && !v.ok)
        throw new MetadataError(
          "EMETA_VERSION",
          `metadata ${path} has format version ${v.version}; this peercopy reads version 1; ${REINIT_ADVICE}`,
        );
      throw corrupt("neither header slot has a valid magic and checksum");
    }
    const [h, headerSlot] = newest;
    if (h.volumeSize !== want.volumeSize || h.trackSize !== want.trackSize) {
      const differs =
        h.volumeSize !== want.volumeSize
          ? `this volume is ${want.volumeSize} bytes`
          : `this volume uses ${want.trackSize}-byte tracks`;
      throw new MetadataError(
        "EMETA_MISMATCH",
        `metadata ${path} records a ${h.volumeSize}-byte volume with ${h.trackSize}-byte tracks; ${differs}; ${REINIT_ADVICE}`,
      );
    }
    let g: Geometry;
    try {
      g = geometry(h.volumeSize, h.trackSize, h.extentSize, h.alExtents);
    } catch (err) {
      throw corrupt(`the header describes no valid layout (${(err as Error).message})`);
    }
    const ab = Buffer.alloc(2 * g.alSlotSize);
    await readAt(io, path, ab, g.alOffset);
    const als = [
      decodeAl(ab.subarray(0, g.alSlotSize), g.alExtents),
      decodeAl(ab.subarray(g.alSlotSize), g.alExtents),
    ];
    const al = pickNewest(
      ...(als.map((d) => (d.ok ? d.value : undefined)) as [AlRecord?, AlRecord?]),
    );
    if (al === undefined) throw corrupt("neither activity-log slot has a valid magic and checksum");
    const m = new FileMetadata(io, path, g, h, headerSlot, al[0], al[1]);
    await m.recover();
    return m;
  }

  private async recover(): Promise<void> {
    const g = this.g;
    const bb = Buffer.alloc(g.bitmapPages * PAGE_SIZE);
    await readAt(this.io, this.path, bb, g.bitmapOffset);
    for (let p = 0; p < g.bitmapPages; p++)
      this.bits.loadPage(p, bb.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE));
    const bitmapTracks = this.bits.outOfSyncTracks;
    const crashed = (this.hdr.flags & MetaFlag.CLEAN) === 0;
    if (crashed)
      for (const e of this.alRecord.extents)
        if (e < g.extentCount) this.bits.markStale(e * g.tracksPerExtent, g.tracksPerExtent);
    this.recovered = { crashed, alTracks: this.bits.outOfSyncTracks - bitmapTracks, bitmapTracks };
    // The replayed marks go to the bitmap first: the in-memory log starts empty,
    // and its first transaction drops the extents the crash left in the log.
    await this.run(async () => {
      await this.writePages(this.allDirtyPages());
      await this.writeHeader({ ...this.hdr, flags: this.hdr.flags & ~MetaFlag.CLEAN });
    });
  }

  get volumeSize(): number {
    return this.g.volumeSize;
  }
  get trackSize(): number {
    return this.g.trackSize;
  }
  get header(): MetaHeader {
    return this.hdr;
  }
  get outOfSyncTracks(): number {
    return this.bits.outOfSyncTracks;
  }
  get outOfSyncBytes(): number {
    return this.bits.outOfSyncBytes;
  }
  markStale(first: number, count: number): void {
    this.bits.markStale(first, count);
  }
  clearStale(track: number): void {
    this.bits.clearStale(track);
  }
  isStale(track: number): boolean {
    return this.bits.isStale(track);
  }
  nextStale(from: number): number {
    return this.bits.nextStale(from);
  }

  beginWrite(first: number, count: number): Promise<void> | undefined {
    if (this.closed) throw new Error(`metadata ${this.path} is closed`);
    return this.al.beginWrite(first, count);
  }

  endWrite(first: number, count: number): void {
    this.al.endWrite(first, count);
  }

  flushBitmap(): Promise<void> {
    return this.run(() => this.writePages(this.allDirtyPages()));
  }

  updateHeader(patch: HeaderPatch): Promise<void> {
    if (patch.pairId !== undefined) checkPairId(patch.pairId);
    return this.run(() => this.writeHeader({ ...this.hdr, ...patch }));
  }

  async close(clean = true): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (clean) {
      // Writes not ended may have reached the volume and not the peer.
      for (const e of this.al.referencedExtents())
        this.bits.markStale(e * this.g.tracksPerExtent, this.g.tracksPerExtent);
      await this.run(async () => {
        await this.writePages(this.allDirtyPages());
        await this.writeTransaction([]);
        await this.writeHeader({ ...this.hdr, flags: this.hdr.flags | MetaFlag.CLEAN });
      });
    } else await this.run(async () => {}).catch(noop);
    await this.io.close();
  }

  private run(job: () => Promise<void>): Promise<void> {
    const p = this.tail.then(job);
    this.tail = p.then(noop, noop);
    return p;
  }

  private allDirtyPages(): number[] {
    const out: number[] = [];
    for (let p = this.bits.nextDirty(0); p >= 0; p = this.bits.nextDirty(p + 1)) out.push(p);
    return out;
  }

  private async writePages(pages: readonly number[]): Promise<void> {
    const written: number[] = [];
    try {
      for (const p of pages) {
        if (!this.bits.isDirty(p)) continue;
        written.push(p);
        await this.io.write(this.bits.takePage(p), this.g.bitmapOffset + p * PAGE_SIZE);
      }
      if (written.length > 0) await this.io.sync();
    } catch (err) {
      for (const p of written) this.bits.setDirty(p);
      throw ioError(this.path, "writing the bitmap", err);
    }
  }

  private async writeTransaction(extents: readonly number[]): Promise<void> {
    const r: AlRecord = { seq: this.alRecord.seq + 1, extents };
    const slot = 1 - this.alSlot;
    try {
      await this.io.write(
        encodeAl(r, this.g.alSlotSize),
        this.g.alOffset + slot * this.g.alSlotSize,
      );
      await this.io.sync();
    } catch (err) {
      throw ioError(this.path, "writing the activity log", err);
    }
    this.alRecord = r;
    this.alSlot = slot;
  }

  private async writeHeader(next: Omit<MetaHeader, "seq">): Promise<void> {
    const h: MetaHeader = { ...next, seq: this.hdr.seq + 1 };
    const slot = 1 - this.headerSlot;
    try {
      await this.io.write(encodeHeader(h), slot * PAGE_SIZE);
      await this.io.sync();
    } catch (err) {
      throw ioError(this.path, "writing the header", err);
    }
    this.hdr = h;
    this.headerSlot = slot;
  }
}

async function readAt(io: MetaIo, path: string, buf: Buffer, offset: number): Promise<void> {
  try {
    await io.read(buf, offset); // short at end of file: the rest stays zero
  } catch (err) {
    throw ioError(path, "reading", err);
  }
}

function ioError(path: string, what: string, err: unknown): MetadataError {
  if (err instanceof MetadataError) return err;
  const why = err instanceof Error ? err.message : String(err);
  return new MetadataError("EMETA_IO", `metadata ${path}: ${what} failed: ${why}`, { cause: err });
}
