// Child processes for the benchmark: every process started here is tracked so
// that a failure, an exception or Ctrl-C can end all of them, and the /proc
// readings (peak RSS, CPU time) the results report.
import { spawn, spawnSync } from "node:child_process";
import { readFile, stat, writeFile } from "node:fs/promises";
import { createServer } from "node:net";

/** @type {Set<TrackedProcess>} */
const live = new Set();
const TAIL_LINES = 40;

/**
 * @typedef {object} TrackedProcess
 * @property {string} name
 * @property {number} pid
 * @property {string} command  the command line, for the record
 * @property {Promise<{ code: number | null, signal: string | null, error?: Error }>} exited
 * @property {() => boolean} running
 * @property {() => string} tail  the last lines of stdout and stderr
 * @property {() => string} stdout  everything the process wrote on stdout
 * @property {(match: (line: string) => boolean, timeoutMs: number) => Promise<string>} waitForLine
 * @property {(path: string, timeoutMs: number) => Promise<void>} waitForFile
 * @property {(graceMs?: number) => Promise<void>} stop
 * @property {(signal: NodeJS.Signals) => void} kill
 */

/**
 * Start a process with stdout and stderr piped (and always drained, so a chatty
 * server never blocks on a full pipe).
 * @param {string} cmd
 * @param {string[]} args
 * @param {{ name?: string, keepStdout?: boolean }} [options]
 * @returns {TrackedProcess}
 */
export function spawnTracked(cmd, args, options = {}) {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  const name = options.name ?? cmd;
  /** @type {string[]} */
  const tail = [];
  /** @type {string[]} */
  const out = [];
  /** @type {Set<(line: string) => void>} */
  const lineListeners = new Set();
  let exitInfo;
  const exited = new Promise((resolve) => {
    child.once("error", (error) => {
      exitInfo = { code: null, signal: null, error };
      resolve(exitInfo);
    });
    child.once("close", (code, signal) => {
      exitInfo ??= { code, signal };
      resolve(exitInfo);
    });
  });

  const onLines = (stream, keep) => {
    let partial = "";
    stream.setEncoding("utf8");
    stream.on("data", (chunk) => {
      if (keep) out.push(chunk);
      const lines = (partial + chunk).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) {
        tail.push(line);
        if (tail.length > TAIL_LINES) tail.shift();
        for (const listener of lineListeners) listener(line);
      }
    });
  };
  onLines(child.stdout, options.keepStdout === true);
  onLines(child.stderr, false);

  /** @type {TrackedProcess} */
  const proc = {
    name,
    pid: child.pid ?? -1,
    command: [cmd, ...args].map(shellQuote).join(" "),
    exited,
    running: () => exitInfo === undefined,
    tail: () => tail.join("\n"),
    stdout: () => out.join(""),
    waitForLine: (match, timeoutMs) =>
      new Promise((resolve, reject) => {
        const done = (fn) => {
          clearTimeout(timer);
          lineListeners.delete(listener);
          fn();
        };
        const listener = (line) => {
          if (match(line)) done(() => resolve(line));
        };
        const timer = setTimeout(
          () => done(() => reject(startError(proc, `not ready after ${timeoutMs} ms`))),
          timeoutMs,
        );
        lineListeners.add(listener);
        void exited.then(() => done(() => reject(startError(proc, "exited during start"))));
      }),
    waitForFile: async (path, timeoutMs) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        if (!proc.running()) throw startError(proc, "exited during start");
        const size = await stat(path).then(
          (s) => s.size,
          () => 0,
        );
        if (size > 0) return;
        if (Date.now() > deadline) throw startError(proc, `no ${path} after ${timeoutMs} ms`);
        await sleep(20);
      }
    },
    stop: (graceMs = 15_000) => stopProcess(proc, graceMs),
    kill: (signal) => {
      if (proc.running()) child.kill(signal);
    },
  };
  live.add(proc);
  void exited.then(() => live.delete(proc));
  return proc;
}

/** SIGTERM, then SIGKILL if the process is still there after graceMs. */
async function stopProcess(proc, graceMs) {
  if (!proc.running()) return;
  proc.kill("SIGTERM");
  let timer;
  const timedOut = new Promise((resolve) => {
    timer = setTimeout(() => resolve(true), graceMs);
  });
  const late = await Promise.race([proc.exited.then(() => false), timedOut]);
  clearTimeout(timer);
  if (late) {
    proc.kill("SIGKILL");
    await proc.exited;
  }
}

function startError(proc, what) {
  return new Error(
    `${proc.name} ${what}\n  command: ${proc.command}\n  output:\n${indent(proc.tail())}`,
  );
}

/** End every process still running: SIGTERM, a short grace, then SIGKILL. */
export async function stopAll(graceMs = 3000) {
  await Promise.all([...live].map((proc) => proc.stop(graceMs)));
}

/** Last resort from a synchronous 'exit' handler: nothing can be awaited there. */
export function killAllSync() {
  for (const proc of live) proc.kill("SIGKILL");
}

/**
 * A TCP port on 127.0.0.1 that was free a moment ago. Another process may take it
 * before the server binds it; callers retry the start with a new port.
 * @returns {Promise<number>}
 */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error("no free port"))));
    });
  });
}

/**
 * Peak resident set size (VmHWM) of a live process, in bytes.
 * @param {number} pid
 */
export async function peakRss(pid) {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const m = /^VmHWM:\s+(\d+)\s+kB$/m.exec(status);
  if (m === null) throw new Error(`no VmHWM in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/**
 * Reset a live process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0), so that a
 * later peakRss() reports the peak since now.
 * @param {number} pid
 */
export async function resetPeakRss(pid) {
  await writeFile(`/proc/${pid}/clear_refs`, "5");
}

let clockTicks;
/**
 * User plus system CPU time of a live process so far, in seconds.
 * @param {number} pid
 */
export async function cpuSeconds(pid) {
  clockTicks ??= Number(runSync("getconf", ["CLK_TCK"]) ?? "100") || 100;
  const text = await readFile(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name, which may itself hold spaces and parentheses.
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / clockTicks;
}

/**
 * Run a short command; its trimmed stdout, or undefined if it could not run or failed.
 * @param {string} cmd
 * @param {string[]} args
 */
export function runSync(cmd, args) {
  const result = spawnSync(cmd, args, { encoding: "utf8", timeout: 10_000 });
  if (result.error !== undefined || result.status !== 0) return undefined;
  return result.stdout.trim();
}

/** @param {number} ms */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** @param {string} text */
export function indent(text, prefix = "    ") {
  return text
    .split("\n")
    .map((line) => prefix + line)
    .join("\n");
}

/** @param {string} arg */
function shellQuote(arg) {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}
