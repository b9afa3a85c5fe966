// Real NBD servers for the client's interop tests: nbdkit and qemu-nbd started
// on a free loopback port or a unix socket in a temporary directory, waited
// for until they accept connections, and stopped (with their temporary files
// removed) by stopPeers().
//
// A missing server skips the tests that need it on a developer machine, loudly,
// and fails them under CI (CI=true), where .ci/run installs everything.
import {
  accessSync,
  appendFileSync,
  constants,
  existsSync,
  readdirSync,
  readFileSync,
  readlinkSync,
} from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, join, relative } from "node:path";
import { execa, type ResultPromise } from "execa";
import { expect } from "vitest";
import { connect, listen, type Endpoint } from "../../nbd/transport.js";
import { formatNbdUri } from "../../nbd/uri.js";

const IN_CI = process.env.CI === "true";

function findExecutable(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
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

/**
 * True when the program is installed. Otherwise: under CI throw (the test file
 * fails); elsewhere print a banner and return false so the caller can skip.
 */
export function requirePeer(name: string): boolean {
  if (findExecutable(name) !== undefined) return true;
  const testPath = expect.getState().testPath;
  const file = testPath === undefined ? "(unknown test file)" : relative(process.cwd(), testPath);
  if (IN_CI) throw new Error(`${file}: ${name} is not installed; CI must install it (.ci/run)`);
  const bar = "!".repeat(78);
  console.warn(`\n${bar}\n!! SKIPPING ${file}: ${name} is not installed\n${bar}\n`);
  // scripts/test.mjs lists these skips in a banner at the end of the run.
  const report = process.env.PEERCOPY_SKIP_REPORT;
  if (report !== undefined && report !== "") {
    appendFileSync(report, `${JSON.stringify({ file, missing: [name] })}\n`);
  }
  return false;
}

/** The lowest port the kernel hands out to port-0 binds and to outgoing connections. */
function ephemeralLow(): number {
  try {
    const low = Number(
      readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0],
    );
    if (low > 0) return low;
  } catch {
    // not Linux: the usual default
  }
  return 32768;
}

/** Chosen ports start here: above the well-known and registered ports most daemons use. */
const CHOSEN_PORTS_FROM = 12_000;

/** Bind `port` (0: any) on 127.0.0.1 and let it go again; the port that was bound. */
async function bindAndRelease(port: number): Promise<number> {
  const listener = await listen({ kind: "tcp", host: "127.0.0.1", port }, (stream) => {
    stream.destroy();
  });
  await listener.close();
  if (listener.endpoint.kind !== "tcp") throw new Error("expected a TCP listener");
  return listener.endpoint.port;
}

/**
 * A port on 127.0.0.1 that was free a moment ago, chosen at random below the
 * ephemeral range: no concurrent test's port-0 listener or outgoing connection can
 * be given it before the server binds it. Two callers picking the same port is left
 * to spawnPeer, which checks the spawned server is the one that listens.
 */
export async function freePort(): Promise<number> {
  const span = ephemeralLow() - CHOSEN_PORTS_FROM;
  for (let attempt = 0; span > 0 && attempt < 64; attempt++) {
    try {
      return await bindAndRelease(CHOSEN_PORTS_FROM + Math.floor(Math.random() * span));
    } catch {
      // taken: try another
    }
  }
  return bindAndRelease(0);
}

/**
 * Whether process `pid` holds the listening socket on 127.0.0.1:`port` (Linux /proc;
 * true where that cannot be read). Connecting alone cannot tell the server just
 * spawned from another test's listener that took the port first.
 */
export function listensOn(pid: number, port: number): boolean {
  let table: string;
  let fds: string[];
  try {
    table = readFileSync("/proc/net/tcp", "utf8");
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return !existsSync("/proc/net/tcp");
  }
  const wanted = new Set<string>();
  for (const line of table.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    const local = f[1];
    if (local === undefined || f[3] !== "0A" || f[9] === undefined) continue;
    if (Number.parseInt(local.slice(local.indexOf(":") + 1), 16) === port) {
      wanted.add(`socket:[${f[9]}]`);
    }
  }
  for (const fd of fds) {
    try {
      if (wanted.has(readlinkSync(`/proc/${pid}/fd/${fd}`))) return true;
    } catch {
      // closed meanwhile
    }
  }
  return false;
}

const tempDirs = new Set<string>();

/** A fresh temporary directory, removed by stopPeers(). */
export async function makeTempDir(prefix = "peercopy-client-"): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

export interface Peer {
  readonly endpoint: Endpoint;
  /** NBD URI of the default export. */
  readonly uri: string;
  readonly pid: number;
  /** The last few KiB the server wrote to stderr. */
  stderr(): string;
  stop(): Promise<void>;
}

const peers = new Set<Peer>();

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // it exited meanwhile
  }
}

async function canConnect(endpoint: Endpoint): Promise<boolean> {
  try {
    const stream = await connect(endpoint, 500);
    stream.destroy();
    return true;
  } catch {
    return false;
  }
}

/**
 * Spawn `command args` and wait until `endpoint` accepts connections. Rejects
 * with the server's stderr if it exits first or is not ready in `timeoutMs`.
 */
export async function spawnPeer(
  command: string,
  args: readonly string[],
  endpoint: Endpoint,
  timeoutMs = 15_000,
): Promise<Peer> {
  const child: ResultPromise = execa(command, args, {
    stdin: "ignore",
    stdout: "ignore",
    stderr: "pipe",
    buffer: false,
    reject: false,
    cleanup: true,
  });
  let log = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    log = (log + chunk.toString("utf8")).slice(-8192);
  });
  let exited = false;
  const exit = child.then((result) => {
    exited = true;
    return result;
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not start ${command}: ${log}`);
  const peer: Peer = {
    endpoint,
    uri: formatNbdUri({ endpoint, exportName: "" }),
    pid,
    stderr: () => log,
    stop: async () => {
      peers.delete(peer);
      if (exited) return;
      signal(pid, "SIGTERM");
      const killer = setTimeout(() => {
        if (!exited) signal(pid, "SIGKILL");
      }, 5000);
      await exit;
      clearTimeout(killer);
    },
  };
  peers.add(peer);
  const deadline = Date.now() + timeoutMs;
  // Ready when it accepts connections and the listener is its own: a server that
  // lost the port to someone else exits, and withPortRetry tries another.
  const ours = (): boolean => endpoint.kind !== "tcp" || listensOn(pid, endpoint.port);
  while (!((await canConnect(endpoint)) && ours())) {
    if (exited || Date.now() > deadline) {
      await peer.stop();
      const why = exited ? "exited" : `was not ready after ${timeoutMs} ms`;
      throw new Error(`${command} ${args.join(" ")} ${why}:\n${log}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return peer;
}

type TcpEndpoint = Extract<Endpoint, { kind: "tcp" }>;

async function withPortRetry(start: (endpoint: TcpEndpoint) => Promise<Peer>): Promise<Peer> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const endpoint: TcpEndpoint = { kind: "tcp", host: "127.0.0.1", port: await freePort() };
    try {
      return await start(endpoint);
    } catch (err) {
      lastError = err; // most likely someone else took the port meanwhile
    }
  }
  throw lastError;
}

async function socketPath(): Promise<string> {
  return join(await makeTempDir(), "nbd.sock");
}

export interface NbdkitOptions {
  /** Plugin and its arguments, e.g. ["memory", "64M"] or ["file", path]. */
  readonly plugin: readonly string[];
  /** Server flags before the plugin, e.g. ["--no-sr"], ["-r"], ["--filter=blocksize-policy"]. */
  readonly flags?: readonly string[];
  readonly unix?: boolean;
}

/** `nbdkit -f -p PORT -i 127.0.0.1 [flags] plugin [args]` (or `-U SOCKET`). */
export async function startNbdkit(options: NbdkitOptions): Promise<Peer> {
  const rest = [...(options.flags ?? []), ...options.plugin];
  if (options.unix === true) {
    const path = await socketPath();
    return spawnPeer("nbdkit", ["-f", "-U", path, ...rest], { kind: "unix", path });
  }
  return withPortRetry((endpoint) => {
    const where = ["-p", String(endpoint.port), "-i", endpoint.host];
    return spawnPeer("nbdkit", ["-f", ...where, ...rest], endpoint);
  });
}

export interface QemuNbdOptions {
  readonly image: string;
  readonly flags?: readonly string[];
  readonly unix?: boolean;
}

/** `qemu-nbd -f raw -t -b 127.0.0.1 -p PORT [flags] image` (or `-k SOCKET`). */
export async function startQemuNbd(options: QemuNbdOptions): Promise<Peer> {
  const rest = ["-f", "raw", "-t", ...(options.flags ?? []), options.image];
  if (options.unix === true) {
    const path = await socketPath();
    return spawnPeer("qemu-nbd", ["-k", path, ...rest], { kind: "unix", path });
  }
  return withPortRetry((endpoint) => {
    const where = ["-b", endpoint.host, "-p", String(endpoint.port)];
    return spawnPeer("qemu-nbd", [...where, ...rest], endpoint);
  });
}

/** Stop every peer still running and remove the temporary directories. */
export async function stopPeers(): Promise<void> {
  await Promise.all([...peers].map((peer) => peer.stop()));
  await Promise.all([...tempDirs].map((dir) => rm(dir, { recursive: true, force: true })));
  tempDirs.clear();
}
