// One controller per metadata file: two processes opening the same volume's
// metadata would interleave header and bitmap writes and lose marks. A lock
// file beside it (PATH.lock, created exclusively, holding the owner's pid)
// says who has it; one left by a process that died (SIGKILL, a crash) is
// taken over, since its owner no longer runs.
import { open, readFile, unlink } from "node:fs/promises";
import { MetadataError } from "./errors.js";

export interface MetadataLock {
  readonly path: string;
  release(): Promise<void>;
}

function isCode(err: unknown, code: string): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === code;
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return isCode(err, "EPERM"); // alive, owned by someone else
  }
}

export async function lockMetadata(path: string): Promise<MetadataLock> {
  const lockPath = `${path}.lock`;
  for (let attempt = 0; ; attempt++) {
    try {
      const fh = await open(lockPath, "wx");
      try {
        await fh.writeFile(`${process.pid}\n`);
      } finally {
        await fh.close();
      }
      let released = false;
      return {
        path: lockPath,
        release: async () => {
          if (released) return;
          released = true;
          await unlink(lockPath).catch(() => {});
        },
      };
    } catch (err) {
      if (!isCode(err, "EEXIST")) {
        throw new MetadataError(
          "EMETA_IO",
          `metadata ${path}: cannot create the lock ${lockPath}: ${(err as Error).message}`,
          { cause: err },
        );
      }
    }
    const owner = Number.parseInt(await readFile(lockPath, "utf8").catch(() => ""), 10);
    if (Number.isSafeInteger(owner) && owner > 0 && running(owner))
      throw new MetadataError(
        "EMETA_IN_USE",
        `metadata ${path} is in use by process ${owner} (${lockPath}): another controller runs on this volume; stop it first, or remove ${lockPath} if process ${owner} is not peercopy`,
      );
    if (attempt >= 2)
      throw new MetadataError(
        "EMETA_IO",
        `metadata ${path}: the lock ${lockPath} keeps reappearing; is another controller starting on this volume?`,
      );
    // Left by a process that is gone (or unreadable, half written): take it over.
    await unlink(lockPath).catch(() => {});
  }
}
