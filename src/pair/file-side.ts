// A pair side kept in the metadata file beside the volume (src/metadata/).
import { MetaFlag, openMetadata, type PairMetadata } from "../metadata/index.js";
import type { Recovered, PairSide, Role, SideState } from "./side.js";

export interface FileSideOptions {
  readonly volumeSize: number;
  readonly trackSize: number;
  readonly role: Role;
  readonly init: boolean;
  readonly alExtents?: number;
}

export async function openFileSide(path: string, o: FileSideOptions): Promise<PairSide> {
  const meta = await openMetadata(path, {
    volumeSize: o.volumeSize,
    trackSize: o.trackSize,
    alExtents: o.alExtents,
    create: o.init ? "overwrite" : "if-missing",
    role: o.role,
  });
  return new FileSide(meta);
}

class FileSide implements PairSide {
  readonly recovered: Recovered;

  constructor(private readonly meta: PairMetadata) {
    this.recovered = {
      crashed: meta.recovered.crashed,
      activityLogTracks: meta.recovered.alTracks,
      bitmapTracks: meta.recovered.bitmapTracks,
    };
  }

  get bits(): PairMetadata {
    return this.meta;
  }

  get path(): string | undefined {
    return this.meta.path;
  }

  get state(): SideState {
    const h = this.meta.header;
    return {
      role: h.role,
      pairId: h.pairId,
      generations: h.generations,
      fresh: (h.flags & MetaFlag.FRESH) !== 0,
      inconsistent: (h.flags & MetaFlag.INCONSISTENT) !== 0,
    };
  }

  beginWrite(first: number, count: number): Promise<void> | undefined {
    return this.meta.beginWrite(first, count);
  }

  endWrite(first: number, count: number): void {
    this.meta.endWrite(first, count);
  }

  update(patch: Partial<SideState>): Promise<void> {
    let flags = this.meta.header.flags;
    if (patch.fresh !== undefined)
      flags = patch.fresh ? flags | MetaFlag.FRESH : flags & ~MetaFlag.FRESH;
    if (patch.inconsistent !== undefined)
      flags = patch.inconsistent ? flags | MetaFlag.INCONSISTENT : flags & ~MetaFlag.INCONSISTENT;
    return this.meta.updateHeader({
      flags,
      ...(patch.role === undefined ? {} : { role: patch.role }),
      ...(patch.pairId === undefined ? {} : { pairId: patch.pairId }),
      ...(patch.generations === undefined ? {} : { generations: patch.generations }),
    });
  }

  flushBits(): Promise<void> {
    return this.meta.flushBitmap();
  }

  close(): Promise<void> {
    return this.meta.close(true);
  }
}
