// Opening the metadata file: the only part of the module that touches node:fs.
import { randomBytes } from "node:crypto";
import { type FileHandle, link, open, rename, unlink } from "node:fs/promises";
import { dirname } from "node:path";
import { MetadataError } from "./errors.js";
import { lockMetadata, type MetadataLock } from "./lock.js";
import { newGeneration } from "./generation.js";
import { MetaFlag, MetaRole, geometry } from "./layout.js";
import { FileMetadata, formatMetadata } from "./store.js";
import type { MetaIo, OpenOptions, PairMetadata } from "./types.js";

export class FileMetaIo implements MetaIo {
  constructor(
    private readonly fh: FileHandle,
    /** Runs after the file is closed (releases the metadata lock). */
    private readonly onClose: () => Promise<void> = () => Promise.resolve(),
  ) {}
  async read(buf: Buffer, offset: number): Promise<number> {
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.fh.read(buf, done, buf.length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  }
  async write(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.fh.write(buf, done, buf.length - done, offset + done);
      done += bytesWritten;
    }
  }
  sync(): Promise<void> {
    return this.fh.datasync();
  }
  async close(): Promise<void> {
    try {
      await this.fh.close();
    } finally {
      await this.onClose();
    }
  }
}

function isCode(err: unknown, code: string): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === code;
}

export async function openMetadata(path: string, o: OpenOptions): Promise<PairMetadata> {
  const g = geometry(o.volumeSize, o.trackSize, o.extentSize, o.alExtents); // caller's mistakes throw here
  const lock = await lockMetadata(path);
  try {
    return await openLocked(path, o, g, lock);
  } catch (err) {
    await lock.release();
    throw err;
  }
}

async function openLocked(
  path: string,
  o: OpenOptions,
  g: ReturnType<typeof geometry>,
  lock: MetadataLock,
): Promise<PairMetadata> {
  if (o.create !== "overwrite") {
    const existing = await openExisting(path, o, lock);
    if (existing !== undefined) return existing;
    if (o.create === "never")
      throw new MetadataError(
        "EMETA_MISSING",
        `metadata ${path} does not exist; start with --init-metadata to create it (the first resync copies the whole volume), or point --metadata at the right file`,
      );
  }
  // Built under a temporary name and moved into place, so a crash while
  // creating never leaves a half-written file at `path`.
  const tmp = `${path}.tmp-${randomBytes(4).toString("hex")}`;
  try {
    const fh = await open(tmp, "wx");
    const io = new FileMetaIo(fh);
    try {
      await formatMetadata(io, g, {
        volumeSize: g.volumeSize,
        trackSize: g.trackSize,
        extentSize: g.extentSize,
        alExtents: g.alExtents,
        role: o.role ?? MetaRole.PRIMARY,
        flags: MetaFlag.CLEAN | MetaFlag.FRESH,
        pairId: "",
        generations: { current: newGeneration(), bitmap: 0n, history: [0n, 0n] },
      });
    } finally {
      await io.close();
    }
    if (o.create === "overwrite") await rename(tmp, path);
    else {
      // link() refuses to replace a file that appeared meanwhile.
      try {
        await link(tmp, path);
      } catch (err) {
        if (!isCode(err, "EEXIST")) throw err;
      }
      await unlink(tmp);
    }
    await syncDir(dirname(path));
  } catch (err) {
    await unlink(tmp).catch(() => {});
    if (err instanceof MetadataError) throw err;
    throw new MetadataError(
      "EMETA_IO",
      `metadata ${path}: creating failed: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  const created = await openExisting(path, o, lock);
  if (created === undefined)
    throw new MetadataError("EMETA_IO", `metadata ${path}: vanished after creating it`);
  return created;
}

async function openExisting(
  path: string,
  o: OpenOptions,
  lock: MetadataLock,
): Promise<PairMetadata | undefined> {
  let fh: FileHandle;
  try {
    fh = await open(path, "r+");
  } catch (err) {
    if (isCode(err, "ENOENT")) return undefined;
    throw new MetadataError(
      "EMETA_IO",
      `metadata ${path}: opening failed: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  const io = new FileMetaIo(fh, () => lock.release());
  try {
    return await FileMetadata.load(io, path, o);
  } catch (err) {
    await fh.close().catch(() => {});
    throw err;
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } catch {
    // Some filesystems refuse fsync on a directory; the rename is then as durable as they make it.
  } finally {
    await fh.close();
  }
}
