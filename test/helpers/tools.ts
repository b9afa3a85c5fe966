// External programs the interop tests drive (nbdinfo, qemu-io, fio …): finding them,
// deciding what a missing one means, and running them with a deadline.
//
// A missing tool skips the tests that need it on a developer machine, loudly, and
// fails them under CI (CI=true), where .ci/run installs everything.
import { accessSync, appendFileSync, constants, existsSync } from "node:fs";
import { delimiter, join, relative } from "node:path";
import { execa } from "execa";
import { expect } from "vitest";

export const IN_CI = process.env.CI === "true";

// Debian's libnbd Python module only loads under /usr/bin/python3, and a Python
// installed elsewhere (pyenv, venv) often comes first on PATH.
const SYSTEM_PATH = `/usr/bin:${process.env.PATH ?? ""}`;

// losetup, mkfs.ext4 and e2fsck live in sbin, which a non-root PATH may lack.
const EXTRA_DIRS = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

export class MissingPrerequisiteError extends Error {
  readonly code = "ERR_MISSING_PREREQUISITE";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "MissingPrerequisiteError";
  }
}

/** Absolute path of an executable found on PATH (or in sbin), or undefined. */
export function findTool(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? "").split(delimiter), ...EXTRA_DIRS];
  for (const dir of dirs) {
    if (dir === "") continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

function currentTestFile(): string {
  const path = expect.getState().testPath;
  return path === undefined ? "(unknown test file)" : relative(process.cwd(), path);
}

// scripts/test.mjs points PEERCOPY_SKIP_REPORT at a file and prints a banner
// from it, so a skip cannot scroll by unnoticed.
function recordSkip(file: string, missing: readonly string[]): void {
  const report = process.env.PEERCOPY_SKIP_REPORT;
  if (report === undefined || report === "") return;
  appendFileSync(report, `${JSON.stringify({ file, missing })}\n`);
}

/**
 * Apply the missing-prerequisite policy to a list of unmet needs: true when
 * there are none; otherwise throw under CI, or warn loudly and return false.
 */
export function requirePrerequisites(unmet: readonly string[]): boolean {
  if (unmet.length === 0) return true;
  const file = currentTestFile();
  const what = unmet.join(", ");
  if (IN_CI) {
    throw new MissingPrerequisiteError(
      `${file}: missing ${what}; CI must install it (see .ci/run)`,
    );
  }
  const line = "!".repeat(78);
  console.warn(
    `\n${line}\n!! SKIPPING ${file}\n!! missing: ${what}\n!! (under CI=true this is a failure)\n${line}\n`,
  );
  recordSkip(file, unmet);
  return false;
}

/** True when every named program is installed (see requirePrerequisites). */
export function requireTools(...names: readonly string[]): boolean {
  return requirePrerequisites(names.filter((name) => findTool(name) === undefined));
}

export function requireTool(name: string): boolean {
  return requireTools(name);
}

/** Loop devices and mounts need root and the kernel's device nodes. */
export function requireRootDevices(...devices: readonly string[]): boolean {
  const unmet: string[] = [];
  if (process.getuid?.() !== 0) unmet.push("root privileges");
  for (const device of devices) if (!existsSync(device)) unmet.push(device);
  return requirePrerequisites(unmet);
}

export interface RunOptions {
  /** Kill the command after this long (default 60 s). */
  readonly timeoutMs?: number;
  readonly input?: string;
  readonly cwd?: string;
  readonly env?: Readonly<Record<string, string>>;
}

export interface RunResult {
  readonly command: string;
  readonly exitCode: number | undefined;
  readonly signal: string | undefined;
  readonly timedOut: boolean;
  readonly stdout: string;
  readonly stderr: string;
}

function tail(text: string, max = 4000): string {
  return text.length <= max ? text : `…${text.slice(-max)}`;
}

/** A readable account of a finished command, for assertion messages. */
export function describeRun(result: RunResult): string {
  const how = result.timedOut
    ? "timed out"
    : result.signal !== undefined
      ? `killed by ${result.signal}`
      : `exit ${String(result.exitCode)}`;
  return `${result.command} → ${how}\n--- stdout\n${tail(result.stdout)}\n--- stderr\n${tail(result.stderr)}`;
}

/** Run a command to completion; never throws for a non-zero exit. */
export async function run(
  file: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const result = await execa(file, args, {
    reject: false,
    timeout: options.timeoutMs ?? 60_000,
    forceKillAfterDelay: 2_000,
    stdin: options.input === undefined ? "ignore" : "pipe",
    ...(options.input === undefined ? {} : { input: options.input }),
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    env: { ...options.env },
    stripFinalNewline: false,
  });
  return {
    command: [file, ...args].join(" "),
    exitCode: result.exitCode,
    signal: result.signal,
    timedOut: result.timedOut,
    stdout: String(result.stdout),
    stderr: String(result.stderr),
  };
}

/** Run a command and throw with its output unless it exits 0. */
export async function runOk(
  file: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const result = await run(file, args, options);
  if (result.exitCode !== 0) throw new Error(describeRun(result));
  return result;
}

/** nbdsh with Debian's Python first on PATH. */
export function nbdsh(args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return run("nbdsh", args, { ...options, env: { PATH: SYSTEM_PATH, ...options.env } });
}

/**
 * Python run inside nbdsh before a test's script: `attempt(name, fn)` records
 * whether fn succeeded or which errno the server sent; `emit()` prints the
 * record as one JSON line prefixed with RESULT so tests can assert on it.
 * libnbd's Python binding gives `errno` as a name ("EINVAL") in some versions
 * and as a number in others; both are normalised to the name.
 */
export const NBDSH_PRELUDE = `
import errno as _errno, json as _json
res = {}
def _errname(e):
    if isinstance(e.errno, int):
        return _errno.errorcode.get(e.errno, str(e.errno))
    return e.errno
def attempt(name, fn):
    try:
        value = fn()
        res[name] = {"ok": True, "value": value if isinstance(value, (bool, int, str)) else None}
    except nbd.Error as e:
        res[name] = {"ok": False, "errno": _errname(e), "message": e.string}
def emit():
    print("RESULT " + _json.dumps(res))
`;

export type NbdshOutcome =
  | { readonly ok: true; readonly value: boolean | number | string | null }
  | { readonly ok: false; readonly errno: string | null; readonly message: string };

/** Run a script under NBDSH_PRELUDE and return what it recorded with attempt(). */
export async function nbdshScript(
  script: string,
  options: RunOptions = {},
): Promise<Record<string, NbdshOutcome>> {
  const result = await nbdsh(["-c", `${NBDSH_PRELUDE}\n${script}\nemit()\n`], options);
  const line = result.stdout.split("\n").find((l) => l.startsWith("RESULT "));
  if (result.exitCode !== 0 || line === undefined) throw new Error(describeRun(result));
  return JSON.parse(line.slice("RESULT ".length)) as Record<string, NbdshOutcome>;
}

/** A JavaScript string as a Python string literal. */
export function py(value: string): string {
  return JSON.stringify(value);
}
