import type { Backend } from "./backend/types.js";
import { FileBackend } from "./backend/file.js";
import { MemoryBackend } from "./backend/memory.js";
import { ReadOnlyFilter } from "./backend/filter.js";
import { nativeFileOps } from "./backend/native-fileops.js";

/**
 * inlineMax of the roles that write whole requests (serve, the secondary's ordered
 * apply): up to 1 MiB on the event loop costs less than a thread-pool round trip
 * (two wake-ups and a context switch each way) for the page-cache copy it hands off.
 */
export const LARGE_INLINE_WRITES = 1024 * 1024;

export interface VolumeSpec {
  /** Path of a file or block device; ignored when `memory` is set. */
  image?: string;
  /** Serve a RAM volume of this many bytes instead of a file. */
  memory?: number;
  /** Create a sparse image of this size when `image` does not exist. */
  size?: number;
  readOnly?: boolean;
  /** Largest write a file volume does on the calling thread (see FileBackend). */
  inlineMax?: number;
}

export interface OpenedVolume {
  backend: Backend;
  description: string;
  /** Something the operator should know, e.g. the native file operations are missing. */
  warnings: string[];
}

export async function openVolume(spec: VolumeSpec): Promise<OpenedVolume> {
  const readOnly = spec.readOnly ?? false;
  const warnings: string[] = [];
  if (spec.memory !== undefined) {
    const backend = new MemoryBackend(spec.memory, readOnly);
    return { backend, description: `memory volume of ${spec.memory} bytes`, warnings };
  }
  if (spec.image === undefined) throw new Error("openVolume needs an image path or a memory size");
  const file = await FileBackend.open(spec.image, {
    readOnly,
    createSize: spec.size,
    inlineMax: spec.inlineMax,
  });
  const native = nativeFileOps();
  if (!native.available) warnings.push(native.warning);
  const backend: Backend = readOnly ? new ReadOnlyFilter(file) : file;
  const kind = file.isBlockDevice ? "block device" : "file";
  return { backend, description: `${kind} ${spec.image}`, warnings };
}
