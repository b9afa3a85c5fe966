// peercopy primary and secondary controllers as child processes for the
// mirroring end-to-end tests: started on free loopback ports over sparse images
// in temporary directories, waited for until they log "listening", driven through
// the admin API, and stopped with SIGTERM (a clean stop must exit 0).
//
// A controller started inside a test is stopped (SIGKILL if need be) when the
// test finishes, and its log is printed if the test fails. Controllers started
// in beforeAll, and the temporary directories, are cleaned up by
// cleanupControllers(), which test files call from afterAll.
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa, type ResultPromise } from "execa";
import { onTestFailed, onTestFinished } from "vitest";
import { PEERCOPY_MAIN } from "./server.js";
import { describeRun, run, type RunResult } from "./tools.js";

export type Role = "primary" | "secondary";

/** One pino JSON line from a controller's stderr. */
export type LogRecord = Readonly<Record<string, unknown>>;

export interface ControllerExit {
  readonly exitCode: number | undefined;
  readonly signal: string | undefined;
}

/** What GET /status on a primary promises (mirror-status.test.ts checks the types). */
export interface PrimaryStatus {
  readonly role: string;
  readonly mode: string;
  readonly pairState: string;
  readonly suspendReason: string | null;
  readonly trackSize: number;
  readonly outOfSync: { readonly tracks: number; readonly bytes: number };
  readonly lag: { readonly writes: number; readonly bytes: number; readonly ms: number };
  readonly link: {
    readonly state: string;
    readonly reconnects: number;
    readonly errors: number;
    readonly sentRequests: number;
  };
  readonly sequencer: {
    readonly subtasksQueued: number;
    readonly subtasksOutOfOrder: number;
    readonly subtasksDispatched: number;
  };
  readonly resync: {
    readonly running: boolean;
    readonly totalTracks: number;
    readonly copiedTracks: number;
  };
}

export interface AdminReply {
  readonly status: number;
  readonly contentType: string;
  readonly text: string;
}

export interface Controller {
  readonly role: Role;
  readonly image: string;
  readonly pid: number;
  /** The NBD URI hosts connect to. */
  readonly uri: string;
  /** The TCP port of `uri` (a secondary restarted on it keeps its URIs). */
  readonly port: number;
  /** The admin API's base URL, e.g. http://127.0.0.1:41085, when started with --admin. */
  readonly adminUrl: string | undefined;
  /** The admin API as HOST:PORT, what the CLI's --admin takes; throws without --admin. */
  adminAddress(): string;
  /** True once the process has exited. */
  readonly exited: boolean;
  log(): string;
  records(): LogRecord[];
  /** The first log record (past or future) that matches; throws after timeoutMs. */
  waitForLog(
    match: (r: LogRecord) => boolean,
    what: string,
    timeoutMs?: number,
  ): Promise<LogRecord>;
  /** Send a signal (default SIGTERM) and wait for the exit; SIGKILL after timeoutMs. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<ControllerExit>;
  /** SIGTERM, and throw (with the log) unless the process exits 0 within timeoutMs. */
  stopClean(timeoutMs?: number): Promise<void>;
  /** An admin API request (GET without a body, POST with `body` as JSON, or an empty one). */
  admin(method: "GET" | "POST", path: string, body?: unknown): Promise<AdminReply>;
}

export interface Secondary extends Controller {
  readonly role: "secondary";
  /** nbd://127.0.0.1:PORT/replication, the primary's --remote. */
  readonly replicationUri: string;
}

export interface Primary extends Controller {
  readonly role: "primary";
  status(): Promise<PrimaryStatus>;
  /** Poll /status until `ok` holds; throws with the last status and the log after timeoutMs. */
  waitForStatus(
    ok: (s: PrimaryStatus) => boolean,
    what: string,
    timeoutMs?: number,
  ): Promise<PrimaryStatus>;
  waitForPairState(state: string, timeoutMs?: number): Promise<PrimaryStatus>;
}

interface CommonOptions {
  readonly image: string;
  /** Passed as --size: the image is created sparse at this size if missing (default 256M). */
  readonly size?: string;
  /** Host port; 0 (the default) lets the controller pick one. */
  readonly port?: number;
  /** Serve the admin API on a free loopback port. */
  readonly admin?: boolean;
  /** Leave it running after the current test (cleanupControllers() stops it). */
  readonly keepAfterTest?: boolean;
  readonly extraArgs?: readonly string[];
  readonly readyTimeoutMs?: number;
}

export type SecondaryOptions = CommonOptions;

export interface PrimaryOptions extends CommonOptions {
  readonly remote: string;
  readonly mode?: "sync" | "async";
  readonly trackSize?: string;
  readonly maxLag?: string;
  readonly onLag?: "block" | "suspend";
  readonly onLinkLoss?: "suspend" | "fail";
}

const LOG_LIMIT = 1024 * 1024;
const running = new Set<Controller>();
const tempDirs = new Set<string>();

export async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** A fresh temporary directory, removed by cleanupControllers(). */
export async function controllerTempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "peercopy-mirror-"));
  tempDirs.add(dir);
  return dir;
}

/** Kill whatever is still running and remove the temporary directories. */
export async function cleanupControllers(): Promise<void> {
  await Promise.all([...running].map((c) => c.stop("SIGKILL", 5_000)));
  await Promise.all([...tempDirs].map((d) => rm(d, { recursive: true, force: true })));
  tempDirs.clear();
}

function insideTest(register: () => void): void {
  try {
    register();
  } catch {
    // Called from beforeAll: there is no current test to attach to.
  }
}

/** A controller's stderr: the raw text (bounded) and every pino record, watchable. */
class LogCapture {
  text = "";
  readonly records: LogRecord[] = [];
  private partial = "";
  private readonly watchers = new Set<(r: LogRecord) => void>();

  feed(chunk: Buffer): void {
    const s = chunk.toString("utf8");
    this.text = (this.text + s).slice(-LOG_LIMIT);
    this.partial += s;
    for (let nl = this.partial.indexOf("\n"); nl >= 0; nl = this.partial.indexOf("\n")) {
      const line = this.partial.slice(0, nl);
      this.partial = this.partial.slice(nl + 1);
      if (!line.startsWith("{")) continue;
      let record: LogRecord;
      try {
        record = JSON.parse(line) as LogRecord;
      } catch {
        continue; // not a log record
      }
      this.records.push(record);
      for (const w of this.watchers) w(record);
    }
  }

  /** Resolves with the first matching record; rejects on timeout or when `exited` settles. */
  waitFor(
    match: (r: LogRecord) => boolean,
    timeoutMs: number,
    exited: Promise<unknown>,
  ): Promise<LogRecord | "timeout" | "exited"> {
    const found = this.records.find(match);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve) => {
      const finish = (outcome: LogRecord | "timeout" | "exited"): void => {
        if (!this.watchers.delete(watcher)) return;
        clearTimeout(timer);
        resolve(outcome);
      };
      const watcher = (r: LogRecord): void => {
        if (match(r)) finish(r);
      };
      const timer = setTimeout(() => finish("timeout"), timeoutMs);
      this.watchers.add(watcher);
      void exited.then(() => finish("exited"));
    });
  }
}

async function spawnController(role: Role, args: string[], options: CommonOptions) {
  if (!existsSync(PEERCOPY_MAIN))
    throw new Error(`${PEERCOPY_MAIN} does not exist: run \`npm run build\` first`);
  const full = [role, options.image, "--size", options.size ?? "256M"];
  full.push("--listen", `127.0.0.1:${options.port ?? 0}`);
  if (options.admin === true) full.push("--admin", "127.0.0.1:0");
  full.push(...args, ...(options.extraArgs ?? []));
  const child: ResultPromise = execa(process.execPath, [PEERCOPY_MAIN, ...full], {
    reject: false,
    buffer: false,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    forceKillAfterDelay: false,
    cleanup: true,
  });
  const capture = new LogCapture();
  child.stdout?.on("data", (chunk: Buffer) => capture.feed(chunk));
  child.stderr?.on("data", (chunk: Buffer) => capture.feed(chunk));
  let exit: ControllerExit | undefined;
  const exited = child.then((r) => (exit = { exitCode: r.exitCode, signal: r.signal }));
  const log = (): string => `$ peercopy ${full.join(" ")}\n${capture.text}`;

  const waitForLog = async (
    match: (r: LogRecord) => boolean,
    what: string,
    timeoutMs = 20_000,
  ): Promise<LogRecord> => {
    const outcome = await capture.waitFor(match, timeoutMs, exited);
    if (outcome === "timeout")
      throw new Error(`${role}: no log record "${what}" after ${timeoutMs} ms\n${log()}`);
    if (outcome === "exited")
      throw new Error(`${role} exited (${JSON.stringify(exit)}) before "${what}"\n${log()}`);
    return outcome;
  };

  const readyTimeoutMs = options.readyTimeoutMs ?? 20_000;
  let listening: LogRecord;
  let adminRecord: LogRecord | undefined;
  try {
    listening = await waitForLog((r) => r.msg === "listening", "listening", readyTimeoutMs);
    if (options.admin === true)
      adminRecord = await waitForLog((r) => r.msg === "admin API", "admin API", readyTimeoutMs);
  } catch (err) {
    child.kill("SIGKILL");
    await exited;
    throw err;
  }
  const uri = listening.uri;
  if (typeof uri !== "string") throw new Error(`"listening" without a uri\n${log()}`);
  const port = Number(/:(\d+)\//.exec(uri)?.[1]);
  const statusUrl = adminRecord?.status;
  const adminUrl = typeof statusUrl === "string" ? statusUrl.replace(/\/status$/, "") : undefined;
  // The token actions need: the file the controller was given or wrote.
  const tokenFile = adminRecord?.tokenFile;
  const adminToken =
    typeof tokenFile === "string" ? (await readFile(tokenFile, "utf8")).trim() : undefined;

  let stopping: Promise<ControllerExit> | undefined;
  const controller: Controller = {
    role,
    image: options.image,
    pid: child.pid ?? -1,
    uri,
    port,
    adminUrl,
    adminAddress() {
      if (adminUrl === undefined) throw new Error(`${role} was started without --admin`);
      return adminUrl.replace(/^https?:\/\//, "");
    },
    get exited() {
      return exit !== undefined;
    },
    log,
    records: () => [...capture.records],
    waitForLog,
    stop(signal: NodeJS.Signals = "SIGTERM", timeoutMs = 20_000) {
      stopping ??= (async () => {
        if (exit === undefined) child.kill(signal);
        const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
        await exited;
        clearTimeout(timer);
        running.delete(controller);
        return exit ?? { exitCode: undefined, signal: undefined };
      })();
      return stopping;
    },
    // Longer than the primary's own --stop-timeout (30 s), so a slow drain ends
    // the way the product ends it rather than by SIGKILL.
    async stopClean(timeoutMs = 40_000) {
      const started = Date.now();
      const result = await controller.stop("SIGTERM", timeoutMs);
      const took = `${((Date.now() - started) / 1000).toFixed(1)} s`;
      if (result.exitCode !== 0 || result.signal !== undefined)
        throw new Error(
          `${role} did not stop cleanly: ${JSON.stringify(result)} after ${took}\n${log()}`,
        );
    },
    async admin(method: "GET" | "POST", path: string, body?: unknown) {
      if (adminUrl === undefined) throw new Error(`${role} was started without --admin`);
      const res = await fetch(`${adminUrl}${path}`, {
        method,
        signal: AbortSignal.timeout(10_000),
        headers: adminToken === undefined ? {} : { authorization: `Bearer ${adminToken}` },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      return {
        status: res.status,
        contentType: res.headers.get("content-type") ?? "",
        text: await res.text(),
      };
    },
  };
  running.add(controller);
  if (options.keepAfterTest !== true) {
    insideTest(() => {
      onTestFailed(() => console.error(`--- ${role} log\n${log().slice(-12_000)}`));
      onTestFinished(async () => {
        await controller.stop("SIGKILL", 5_000);
      });
    });
  }
  return { controller, listening };
}

export async function startSecondary(options: SecondaryOptions): Promise<Secondary> {
  const { controller, listening } = await spawnController("secondary", [], options);
  const replicationUri = listening.replicationUri;
  if (typeof replicationUri !== "string")
    throw new Error(`secondary logged no replicationUri\n${controller.log()}`);
  return Object.assign(controller, { role: "secondary" as const, replicationUri });
}

export async function startPrimary(options: PrimaryOptions): Promise<Primary> {
  const args = ["--remote", options.remote, "--mode", options.mode ?? "sync"];
  if (options.trackSize !== undefined) args.push("--track-size", options.trackSize);
  if (options.maxLag !== undefined) args.push("--max-lag", options.maxLag);
  if (options.onLag !== undefined) args.push("--on-lag", options.onLag);
  if (options.onLinkLoss !== undefined) args.push("--on-link-loss", options.onLinkLoss);
  const { controller } = await spawnController("primary", args, {
    ...options,
    admin: options.admin ?? true,
  });
  const status = async (): Promise<PrimaryStatus> => {
    const reply = await controller.admin("GET", "/status");
    if (reply.status !== 200) throw new Error(`GET /status → ${reply.status}: ${reply.text}`);
    return JSON.parse(reply.text) as PrimaryStatus;
  };
  const waitForStatus = async (
    ok: (s: PrimaryStatus) => boolean,
    what: string,
    timeoutMs = 30_000,
  ): Promise<PrimaryStatus> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (controller.exited)
        throw new Error(`primary exited while waiting for ${what}\n${controller.log()}`);
      const s = await status();
      if (ok(s)) return s;
      if (Date.now() > deadline)
        throw new Error(
          `primary: no ${what} after ${timeoutMs} ms; last status ${JSON.stringify(s)}\n${controller.log()}`,
        );
      await sleep(50);
    }
  };
  return Object.assign(controller, {
    role: "primary" as const,
    status,
    waitForStatus,
    waitForPairState: (state: string, timeoutMs?: number) =>
      waitForStatus((s) => s.pairState === state, `pairState ${state}`, timeoutMs),
  });
}

/** A secondary and a primary mirroring to it, already in full duplex. */
export async function startPair(
  dir: string,
  options: Omit<PrimaryOptions, "image" | "remote"> = {},
): Promise<{ primary: Primary; secondary: Secondary }> {
  const keep = options.keepAfterTest === true ? { keepAfterTest: true } : {};
  const secondary = await startSecondary({ image: join(dir, "secondary.img"), ...keep });
  const primary = await startPrimary({
    ...options,
    image: join(dir, "primary.img"),
    remote: secondary.replicationUri,
  });
  await primary.waitForPairState("full-duplex");
  return { primary, secondary };
}

// --- workloads and checks shared by the mirror tests ---

export interface FioJob {
  readonly jobname: string;
  readonly error: number;
  readonly read: { readonly io_bytes: number };
  readonly write: { readonly io_bytes: number };
}

export interface FioRun {
  readonly result: RunResult;
  readonly jobs: FioJob[];
}

/** fio's NBD engine against `uri`; `args` are the job options. JSON output is parsed. */
export async function fio(
  uri: string,
  args: readonly string[],
  cwd: string,
  timeoutMs = 120_000,
): Promise<FioRun> {
  const result = await run(
    "fio",
    ["--ioengine=nbd", `--uri=${uri}`, "--output-format=json", ...args],
    // fio drops state files in its working directory: keep them out of the tree.
    { timeoutMs, cwd },
  );
  // fio prints "fio: connected to NBD server" on stdout before its JSON.
  const start = result.stdout.indexOf("{");
  if (start < 0) return { result, jobs: [] };
  try {
    const report = JSON.parse(result.stdout.slice(start)) as { jobs?: FioJob[] };
    return { result, jobs: report.jobs ?? [] };
  } catch {
    return { result, jobs: [] };
  }
}

/**
 * Ends a time-based fio run against `uri` the way Ctrl-C does (SIGINT: fio
 * stops, reports and exits 0) and returns its report. Throws if none was running.
 */
export async function stopFio(uri: string, load: Promise<FioRun>): Promise<FioRun> {
  const stopped = await run("pkill", ["-INT", "-f", `fio.*uri=${uri}`]);
  if (stopped.exitCode !== 0)
    throw new Error(`no fio against ${uri} to stop: ${describeRun(stopped)}`);
  return load;
}

/** `qemu-img compare` of two raw images: its output and exit code. */
export function compareImages(a: string, b: string): Promise<RunResult> {
  return run("qemu-img", ["compare", "-f", "raw", "-F", "raw", a, b], { timeoutMs: 60_000 });
}
