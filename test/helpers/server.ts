// Start and stop the NBD server under test.
//
// By default that is `peercopy serve` from dist/ (build it first: `npm run build`).
// PEERCOPY_TEST_SERVER=nbdkit runs nbdkit instead, shaped like peercopy (same block
// size limits, a description, the export name listed), so the tests themselves can
// be checked against a mature server.
import { existsSync } from "node:fs";
import { mkdtemp, open, readFile, readdir, readlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { execa, type ResultPromise } from "execa";
import { onTestFailed, onTestFinished } from "vitest";
import { run, type RunResult } from "./tools.js";

export type ServerKind = "peercopy" | "nbdkit";

export const PEERCOPY_MAIN = resolve(import.meta.dirname, "../../dist/src/cli/main.js");

/** 32 MiB: the largest payload the server accepts (NBD_INFO_BLOCK_SIZE maximum). */
export const MAX_PAYLOAD = 32 * 1024 * 1024;

export function serverKind(): ServerKind {
  const chosen = process.env.PEERCOPY_TEST_SERVER ?? "peercopy";
  if (chosen === "peercopy" || chosen === "nbdkit") return chosen;
  throw new Error(`PEERCOPY_TEST_SERVER must be "peercopy" or "nbdkit", not ${chosen}`);
}

export interface ServeOptions {
  /** A file or block device to serve. */
  readonly image?: string;
  /** Create the image as a sparse file of this size if it does not exist. */
  readonly size?: string;
  /** Serve RAM instead of an image, e.g. "64M". */
  readonly memory?: string;
  readonly transport?: "tcp" | "unix";
  readonly exportName?: string;
  readonly readOnly?: boolean;
  /** How long to wait for the server to be ready (default 20 s). */
  readonly readyTimeoutMs?: number;
}

export interface ServerExit {
  readonly exitCode: number | undefined;
  readonly signal: string | undefined;
}

export interface RunningServer {
  readonly kind: ServerKind;
  /** The NBD URI clients connect to. */
  readonly uri: string;
  readonly pid: number;
  /** Everything the server printed so far (stdout and stderr). */
  log(): string;
  /** Send a signal (default SIGTERM) and wait for the exit; SIGKILL after timeoutMs. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<ServerExit>;
}

const LOG_LIMIT = 256 * 1024;

interface Spawned {
  readonly child: ResultPromise;
  readonly log: () => string;
  /** Resolves with each complete line the server prints. */
  readonly onLine: (listener: (line: string) => void) => void;
}

function spawnServer(file: string, args: readonly string[]): Spawned {
  const child = execa(file, args, {
    reject: false,
    buffer: false,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    // stop() decides when to escalate to SIGKILL, not execa's 5 s default.
    forceKillAfterDelay: false,
  });
  let text = "";
  let partial = "";
  const listeners: ((line: string) => void)[] = [];
  const take = (chunk: Buffer): void => {
    const s = chunk.toString("utf8");
    text = (text + s).slice(-LOG_LIMIT);
    partial += s;
    let nl = partial.indexOf("\n");
    while (nl >= 0) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      for (const listener of listeners) listener(line);
      nl = partial.indexOf("\n");
    }
  };
  child.stdout?.on("data", take);
  child.stderr?.on("data", take);
  return {
    child,
    log: () => text,
    onLine: (listener) => listeners.push(listener),
  };
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** Wait for `ready` to return a value, the process to exit, or the deadline. */
async function waitReady<T>(
  spawned: Spawned,
  ready: () => Promise<T | undefined>,
  timeoutMs: number,
  what: string,
): Promise<T> {
  let exited: ServerExit | undefined;
  void spawned.child.then((r) => {
    exited = { exitCode: r.exitCode, signal: r.signal };
  });
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await ready();
    if (value !== undefined) return value;
    if (exited !== undefined) {
      throw new Error(
        `${what} exited before it was ready (exit ${String(exited.exitCode)}, signal ${String(exited.signal)}):\n${spawned.log()}`,
      );
    }
    await sleep(50);
  }
  spawned.child.kill("SIGKILL");
  throw new Error(`${what} was not ready after ${timeoutMs} ms:\n${spawned.log()}`);
}

// nbdkit -p 0 binds a free port without saying which: read it back from /proc.
async function listeningTcpPort(pid: number): Promise<number | undefined> {
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [])) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "");
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m?.[1] !== undefined) inodes.add(m[1]);
  }
  const table = await readFile(`/proc/${pid}/net/tcp`, "utf8").catch(() => "");
  for (const row of table.split("\n").slice(1)) {
    const cols = row.trim().split(/\s+/);
    const local = cols[1];
    const state = cols[3];
    const inode = cols[9];
    if (local === undefined || inode === undefined || state !== "0A") continue;
    if (!inodes.has(inode)) continue;
    const port = local.split(":")[1];
    if (port !== undefined) return parseInt(port, 16);
  }
  return undefined;
}

function peercopyArgs(options: ServeOptions, socket: string): string[] {
  const args = ["serve"];
  if (options.memory !== undefined) args.push("--memory", options.memory);
  else if (options.image !== undefined) args.push(options.image);
  if (options.size !== undefined) args.push("--size", options.size);
  if ((options.transport ?? "tcp") === "tcp") args.push("--listen", "127.0.0.1:0");
  else args.push("--socket", socket);
  if (options.exportName !== undefined) args.push("--export", options.exportName);
  if (options.readOnly === true) args.push("--read-only");
  return args;
}

async function startPeercopy(
  options: ServeOptions,
  dir: string,
): Promise<Spawned & { uri: string }> {
  if (!existsSync(PEERCOPY_MAIN)) {
    throw new Error(`${PEERCOPY_MAIN} does not exist: run \`npm run build\` first`);
  }
  const spawned = spawnServer(process.execPath, [
    PEERCOPY_MAIN,
    ...peercopyArgs(options, join(dir, "nbd.sock")),
  ]);
  let uri: string | undefined;
  spawned.onLine((line) => {
    if (!line.startsWith("{")) return;
    try {
      const entry = JSON.parse(line) as { msg?: unknown; uri?: unknown };
      if (entry.msg === "listening" && typeof entry.uri === "string") uri ??= entry.uri;
    } catch {
      // not a log record
    }
  });
  const found = await waitReady(
    spawned,
    () => Promise.resolve(uri),
    options.readyTimeoutMs ?? 20_000,
    "peercopy serve",
  );
  return { ...spawned, uri: found };
}

async function ensureSparseImage(options: ServeOptions): Promise<void> {
  if (options.image === undefined || options.size === undefined || existsSync(options.image)) {
    return;
  }
  await createSparseFile(options.image, parseSize(options.size));
}

async function startNbdkit(options: ServeOptions, dir: string): Promise<Spawned & { uri: string }> {
  await ensureSparseImage(options);
  const pidfile = join(dir, "nbdkit.pid");
  const socket = join(dir, "nbd.sock");
  const tcp = (options.transport ?? "tcp") === "tcp";
  const name = options.exportName ?? "";
  const args = ["-f", "--exit-with-parent", "-P", pidfile];
  args.push(...(tcp ? ["-i", "127.0.0.1", "-p", "0"] : ["-U", socket]));
  if (options.readOnly === true) args.push("-r");
  if (name !== "") args.push("-e", name);
  args.push("--filter=blocksize-policy", "--filter=exportname");
  if (options.memory !== undefined) args.push("memory", options.memory);
  else if (options.image !== undefined) args.push("file", options.image);
  else throw new Error("startServer: give an image or memory");
  args.push(
    "blocksize-minimum=1",
    "blocksize-preferred=4096",
    `blocksize-maximum=${MAX_PAYLOAD}`,
    "exportdesc=fixed:nbdkit stand-in for peercopy",
  );
  if (name !== "") args.push("exportname-list=explicit", `exportname=${name}`);
  const spawned = spawnServer("nbdkit", args);
  // nbdkit writes its pidfile once it is accepting connections.
  const port = await waitReady(
    spawned,
    async () => {
      if (!existsSync(pidfile)) return undefined;
      if (!tcp) return 0;
      return spawned.child.pid === undefined ? undefined : listeningTcpPort(spawned.child.pid);
    },
    options.readyTimeoutMs ?? 20_000,
    "nbdkit",
  );
  const path = encodeURIComponent(name);
  const uri = tcp
    ? `nbd://127.0.0.1:${port}/${path}`
    : `nbd+unix:///${path}?socket=${encodeURIComponent(socket)}`;
  return { ...spawned, uri };
}

/** Start the server under test and wait until it accepts connections. */
export async function startServer(options: ServeOptions): Promise<RunningServer> {
  const kind = serverKind();
  const dir = await mkdtemp(join(tmpdir(), "peercopy-srv-"));
  let started: Spawned & { uri: string };
  try {
    started =
      kind === "peercopy" ? await startPeercopy(options, dir) : await startNbdkit(options, dir);
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const { child } = started;
  let exit: Promise<ServerExit> | undefined;
  const stop = (signal: NodeJS.Signals = "SIGTERM", timeoutMs = 15_000): Promise<ServerExit> => {
    exit ??= (async () => {
      child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      const result = await child;
      clearTimeout(timer);
      await rm(dir, { recursive: true, force: true });
      return { exitCode: result.exitCode, signal: result.signal };
    })();
    return exit;
  };
  return { kind, uri: started.uri, pid: child.pid ?? -1, log: started.log, stop };
}

/**
 * Start a server for the current test: it is stopped when the test finishes,
 * and its log is printed if the test fails.
 */
export async function serveForTest(options: ServeOptions): Promise<RunningServer> {
  const server = await startServer(options);
  onTestFailed(() => {
    console.error(`--- ${server.kind} log (${server.uri})\n${server.log().slice(-8000)}`);
  });
  onTestFinished(async () => {
    await server.stop();
  });
  return server;
}

/** "64M" → 67108864. Accepts a plain byte count or a K/M/G/T suffix. */
export function parseSize(text: string): number {
  const m = /^(\d+)([KMGT]?)$/i.exec(text);
  if (m?.[1] === undefined) throw new Error(`bad size ${text}`);
  const shift = { "": 0, K: 10, M: 20, G: 30, T: 40 }[(m[2] ?? "").toUpperCase()] ?? 0;
  return Number(m[1]) * 2 ** shift;
}

export async function createSparseFile(path: string, size: number): Promise<void> {
  const handle = await open(path, "w");
  try {
    await handle.truncate(size);
  } finally {
    await handle.close();
  }
}

/** A fresh temporary directory, removed when the current test finishes. */
export async function tempDirForTest(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "peercopy-test-"));
  onTestFinished(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  return dir;
}

/** Run the peercopy CLI to completion (for argument errors and the like). */
export async function runPeercopy(args: readonly string[], timeoutMs = 15_000): Promise<RunResult> {
  if (!existsSync(PEERCOPY_MAIN)) {
    throw new Error(`${PEERCOPY_MAIN} does not exist: run \`npm run build\` first`);
  }
  return run(process.execPath, [PEERCOPY_MAIN, ...args], { timeoutMs });
}
