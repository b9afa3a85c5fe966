// Options and messages shared by the primary and secondary commands.
import type { StopReport } from "../controller/primary.js";
import type { MetadataSpec } from "../pair/open-side.js";
import { UsageError } from "./args.js";

interface MetadataValues {
  metadata?: string;
  "init-metadata"?: boolean;
  "al-extents"?: string;
}

export function parseMetadataArgs(values: MetadataValues): MetadataSpec {
  const al = values["al-extents"];
  let alExtents: number | undefined;
  if (al !== undefined) {
    alExtents = Number(al);
    if (!Number.isInteger(alExtents) || alExtents < 1 || alExtents > 65536)
      throw new UsageError(`--al-extents: "${al}" must be a whole number from 1 to 65536`);
  }
  if (values.metadata === "") throw new UsageError("--metadata: give a file path or none");
  return { path: values.metadata, init: values["init-metadata"] === true, alExtents };
}

/** One line saying exactly what the secondary has after a stop. */
export function stopMessage(r: StopReport): string {
  if (r.inSync) return "stopped; the pair was in sync: the secondary holds every write";
  if (r.neverSynced)
    return "stopped; the secondary never completed a first copy from this volume: the next start copies it in full";
  const where =
    r.metadata === undefined
      ? "not kept (--metadata none): the next start copies the whole volume"
      : `recorded in ${r.metadata} for the next start`;
  return `stopped; ${r.outOfSyncTracks} tracks (${r.outOfSyncBytes} bytes) are out of sync on the secondary, ${where}`;
}
