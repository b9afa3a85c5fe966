// Opens the pair side of a volume: its metadata file beside the image (by
// default IMAGE.pcmeta), or nothing kept (`--metadata none`, and RAM volumes).
import type { VolumeSpec } from "../volume.js";
import { MemorySide, type PairSide, type Role } from "./side.js";

export interface MetadataSpec {
  /** A file path, or "none" to keep the marks in memory only. Default: IMAGE.pcmeta. */
  readonly path?: string;
  /** Discard an existing metadata file that does not fit (and start with a full copy). */
  readonly init?: boolean;
  /** Activity-log extents: how many 4 MiB regions may be hot at once. */
  readonly alExtents?: number;
}

export function metadataPath(
  spec: MetadataSpec | undefined,
  volume: VolumeSpec,
): string | undefined {
  if (spec?.path === "none") return undefined;
  if (spec?.path !== undefined) return spec.path;
  if (volume.memory !== undefined || volume.image === undefined) return undefined;
  return `${volume.image}.pcmeta`;
}

export async function openSide(
  spec: MetadataSpec | undefined,
  volume: VolumeSpec,
  volumeSize: number,
  trackSize: number,
  role: Role,
): Promise<PairSide> {
  const path = metadataPath(spec, volume);
  if (path === undefined) return new MemorySide(volumeSize, trackSize, role);
  const { openFileSide } = await import("./file-side.js");
  return openFileSide(path, {
    volumeSize,
    trackSize,
    role,
    init: spec?.init ?? false,
    alExtents: spec?.alExtents,
  });
}
