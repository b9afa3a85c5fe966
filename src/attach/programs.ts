// Running the system programs an attachment is made of (nbd-client, nbdfuse,
// losetup, fusermount3): found on PATH or in sbin, run with a deadline.
import { execFile } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";

// losetup and modprobe live in sbin, which a non-root PATH may lack.
const EXTRA_DIRS = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

let searchPath = "";

/** Directories (PATH syntax) searched before sbin and bin; the CLI passes $PATH. */
export function setSearchPath(path: string): void {
  searchPath = path;
}

/** Absolute path of an executable on the search path or in sbin/bin, or undefined. */
export function findProgram(name: string): string | undefined {
  for (const dir of [...searchPath.split(delimiter), ...EXTRA_DIRS]) {
    if (dir === "") continue;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // not here
    }
  }
  return undefined;
}

export interface ProgramResult {
  /** The exit code; -1 when it could not start or was killed. */
  readonly code: number;
  /** stdout then stderr. */
  readonly output: string;
}

/** Run a program to completion (killed after timeoutMs); never throws. */
export function runProgram(
  file: string,
  args: readonly string[],
  timeoutMs = 30_000,
): Promise<ProgramResult> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, encoding: "utf8" }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === "number" ? err.code : -1;
      const why = err !== null && typeof err.code !== "number" ? err.message : "";
      resolve({ code, output: `${stdout}${stderr}${why}` });
    });
  });
}

export async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}
