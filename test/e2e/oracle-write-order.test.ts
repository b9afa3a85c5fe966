// Write-order fidelity, end to end: a host writes through a real primary to a real
// secondary, the pair is broken at a random moment, and the secondary's image is
// checked by the oracle (test/helpers/oracle.ts): if write B was issued after write
// A was acknowledged, the secondary never holds B without A.
//
// The replication link runs through a proxy owned by this test, which also adds
// 0-4 ms of distance each way. Right before each cut the proxy stops accepting
// connections, so the primary cannot reconnect and resync: a resync copies tracks
// in ascending order, not in write order, and would overwrite the very state under
// test (the pair is duplex-pending then, which promises nothing). After the cut
// the test waits until the secondary has closed its end of the link, then sends it
// a FLUSH on a new connection; a peercopy secondary answers it only after every
// write it has taken in. The image read is then the secondary's settled state:
// whatever prefix of the replication stream reached it. Cuts:
//   link-cut        POST /link/cut on the primary's admin API
//   network         the proxy drops both sides at once, mid-stream
//   primary-kill    SIGKILL of the primary
//   secondary-kill  SIGKILL of the secondary; the image is read as the crash left it
// Secondaries: peercopy (the link keeps dependent writes in flight together and
// relies on arrival order), nbdkit's file plugin and qemu-nbd (the link waits for
// dependencies to be acknowledged), and peercopy with --ordered-remote no.
//
// Every trial prints its seed. PEERCOPY_ORACLE_SEED=S runs trials with seeds
// S, S+1, … for every combination (pick one with -t); the seed fixes the workload,
// its region, the distance and the cut point, though not the timing of the
// processes. PEERCOPY_ORACLE_TRIALS sets the number of trials per combination
// (default 3).
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import { execa, type ResultPromise } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectUri } from "../../nbd/client/index.js";
import { connect, listen, type Endpoint, type Listener } from "../../nbd/transport.js";
import { formatNbdUri, parseNbdUri } from "../../nbd/uri.js";
import {
  HostWorkload,
  checkWriteOrder,
  createRng,
  describeReport,
  type OracleReport,
} from "../helpers/oracle.js";
import { startNbdkit, startQemuNbd, stopPeers } from "../helpers/peers.js";
import { PEERCOPY_MAIN } from "../helpers/server.js";
import { requireTool } from "../helpers/tools.js";

// Small: the initial copy of every track runs before each trial.
const SIZE = "16M";
const SIZE_BYTES = 16 * 1024 * 1024;
const TRACK = 16 * 1024;
/** Smaller regions overlap more writes, so more of them wait on one another. */
const REGIONS = [256 * 1024, 1024 * 1024, 4 * 1024 * 1024];
const TRIALS = Number(process.env.PEERCOPY_ORACLE_TRIALS ?? "3");
const REPLAY_SEED = process.env.PEERCOPY_ORACLE_SEED;
if (REPLAY_SEED !== undefined && !/^\d+$/.test(REPLAY_SEED))
  throw new Error(`PEERCOPY_ORACLE_SEED must be a whole number, not ${REPLAY_SEED}`);

/** Trial i's seed: fresh each run, or PEERCOPY_ORACLE_SEED + i to replay one. */
function trialSeed(i: number): number {
  if (REPLAY_SEED === undefined) return Math.floor(Math.random() * 2 ** 32);
  return (Number(REPLAY_SEED) + i) >>> 0;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not done after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// --- peercopy controllers ---

type LogRecord = Record<string, unknown>;

class Controller {
  private text = "";
  private partial = "";
  private readonly records: LogRecord[] = [];
  private readonly child: ResultPromise;
  readonly exit: Promise<string>;

  constructor(args: readonly string[]) {
    this.child = execa(process.execPath, [PEERCOPY_MAIN, ...args], {
      stdin: "ignore",
      stdout: "ignore",
      stderr: "pipe",
      buffer: false,
      reject: false,
      cleanup: true,
      forceKillAfterDelay: false,
    });
    this.child.stderr?.on("data", (chunk: Buffer) => this.take(chunk.toString("utf8")));
    this.exit = this.child.then((r) => r.signal ?? `exit ${String(r.exitCode)}`);
  }

  log(): string {
    return this.text;
  }

  kill(signal: NodeJS.Signals): void {
    this.child.kill(signal);
  }

  /** The first log record with this msg, once the controller has written it. */
  async record(msg: string, timeoutMs = 20_000): Promise<LogRecord> {
    let exited: string | undefined;
    void this.exit.then((how) => (exited = how));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.records.find((r) => r.msg === msg);
      if (found !== undefined) return found;
      if (exited !== undefined || Date.now() > deadline)
        throw new Error(`no "${msg}" (${exited ?? "timed out"}):\n${this.text.slice(-4000)}`);
      await sleep(20);
    }
  }

  private take(s: string): void {
    this.text = (this.text + s).slice(-256 * 1024);
    this.partial += s;
    for (let nl = this.partial.indexOf("\n"); nl >= 0; nl = this.partial.indexOf("\n")) {
      const line = this.partial.slice(0, nl);
      this.partial = this.partial.slice(nl + 1);
      if (line.startsWith("{")) {
        try {
          this.records.push(JSON.parse(line) as LogRecord);
        } catch {
          // not a log record
        }
      }
    }
  }
}

// --- the link, through a proxy the test can cut ---

/** Bytes from one side to the other, in order, each chunk `latencyMs` late: distance. */
class DelayLine {
  private readonly queue: { at: number; chunk: Buffer }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private ending = false;

  constructor(
    private readonly dest: Duplex,
    private readonly latencyMs: number,
  ) {}

  write(chunk: Buffer): void {
    if (this.latencyMs === 0 && this.queue.length === 0) {
      if (!this.dest.destroyed) this.dest.write(chunk);
      return;
    }
    this.queue.push({ at: performance.now() + this.latencyMs, chunk });
    this.schedule();
  }

  /** End the destination once everything before has been delivered. */
  end(): void {
    this.ending = true;
    if (this.queue.length === 0) this.dest.end();
  }

  /** The network lost what was in transit. */
  discard(): void {
    this.queue.length = 0;
    clearTimeout(this.timer);
  }

  private schedule(): void {
    const head = this.queue[0];
    if (this.timer !== undefined || head === undefined) return;
    this.timer = setTimeout(this.flush, Math.max(0, head.at - performance.now()));
  }

  private readonly flush = (): void => {
    this.timer = undefined;
    const now = performance.now();
    while ((this.queue[0]?.at ?? Infinity) <= now) {
      const { chunk } = this.queue.shift() as { chunk: Buffer };
      if (!this.dest.destroyed) this.dest.write(chunk);
    }
    if (this.queue.length > 0) this.schedule();
    else if (this.ending) this.dest.end();
  };
}

interface Pair {
  readonly down: Duplex;
  up: Duplex | undefined;
  readonly lines: DelayLine[];
}

class LinkProxy {
  private refusing = false;
  private readonly open = new Set<Pair>();
  private readonly upClosed: Promise<void>[] = [];

  private constructor(
    private readonly listener: Listener,
    /** Known once the secondary is up; connections wait for it. */
    private readonly target: Promise<Endpoint>,
    private readonly latencyMs: number,
  ) {}

  static async start(target: Promise<Endpoint>, latencyMs: number): Promise<LinkProxy> {
    const early: Duplex[] = [];
    let accept = (down: Duplex): void => void early.push(down);
    const listener = await listen({ kind: "tcp", host: "127.0.0.1", port: 0 }, (down) =>
      accept(down),
    );
    const proxy = new LinkProxy(listener, target, latencyMs);
    accept = (down) => proxy.accept(down);
    for (const down of early) proxy.accept(down);
    return proxy;
  }

  get endpoint(): Endpoint {
    return this.listener.endpoint;
  }

  /** No new link from now on: the primary's reconnection attempts fail. */
  refuse(): void {
    if (this.refusing) return;
    this.refusing = true;
    void this.listener.close();
  }

  /** The network fails: both sides lose the connection and what was in transit, at once. */
  drop(): void {
    for (const pair of this.open) {
      for (const line of pair.lines) line.discard();
      pair.down.destroy();
      pair.up?.destroy();
    }
  }

  /** Resolves when the secondary has closed every link connection. */
  async quiesced(): Promise<void> {
    await Promise.all(this.upClosed);
  }

  private accept(down: Duplex): void {
    if (this.refusing) {
      down.destroy();
      return;
    }
    const pair: Pair = { down, up: undefined, lines: [] };
    this.open.add(pair);
    down.pause();
    down.on("error", () => undefined);
    let closed: () => void = () => undefined;
    this.upClosed.push(new Promise((resolve) => (closed = resolve)));
    const gone = (): void => {
      this.open.delete(pair);
      down.destroy();
      closed();
    };
    this.target.then(connect).then((up) => {
      pair.up = up;
      const toUp = new DelayLine(up, this.latencyMs);
      const toDown = new DelayLine(down, this.latencyMs);
      pair.lines.push(toUp, toDown);
      up.on("error", () => undefined);
      up.on("close", gone);
      // Replies are read even once the primary is gone, so the secondary is never
      // held up writing them; what the primary sent still reaches the secondary.
      up.on("data", (chunk: Buffer) => toDown.write(chunk));
      down.on("data", (chunk: Buffer) => toUp.write(chunk));
      down.on("close", () => toUp.end());
      if (down.destroyed) toUp.end();
      else down.resume();
    }, gone);
  }
}

// --- one trial ---

type SecondaryKind = "peercopy" | "nbdkit" | "qemu-nbd";
type Mode = "sync" | "async";
type Cut = "link-cut" | "network" | "primary-kill" | "secondary-kill";

interface Trial {
  readonly secondary: SecondaryKind;
  /** The primary's --ordered-remote (default auto). */
  readonly orderedRemote: "auto" | "no";
  readonly mode: Mode;
  readonly cut: Cut;
  readonly seed: number;
}

interface TrialResult {
  readonly secondary: OracleReport;
  readonly primary: OracleReport;
  /** Whether the link was ordered (peercopy's own secondary detected). */
  readonly ordered: unknown;
  readonly pairStateAfterCut: string | undefined;
  readonly primaryExit: string | undefined;
  /** The random choices of the trial, for the log. */
  readonly setup: string;
}

type Cleanup = () => Promise<unknown> | void;

async function status(url: string): Promise<LogRecord> {
  const res = await fetch(url);
  return (await res.json()) as LogRecord;
}

async function waitForPairState(url: string, want: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  let last = "";
  while (Date.now() < deadline) {
    last = String((await status(url)).pairState);
    if (last === want) return;
    await sleep(50);
  }
  throw new Error(`pair state is ${last}, not ${want}, after ${ms} ms`);
}

interface Secondary {
  readonly uri: string;
  kill(): void;
}

async function startSecondary(
  kind: SecondaryKind,
  image: string,
  cleanups: Cleanup[],
): Promise<Secondary> {
  if (kind === "peercopy") {
    const c = new Controller(["secondary", image, "--size", SIZE, "--listen", "127.0.0.1:0"]);
    cleanups.push(() => {
      c.kill("SIGKILL");
      return c.exit;
    });
    const uri = String((await c.record("listening")).replicationUri);
    return { uri, kill: () => c.kill("SIGKILL") };
  }
  await writeFile(image, "");
  await truncate(image, SIZE_BYTES);
  const peer =
    kind === "nbdkit"
      ? await startNbdkit({ plugin: ["file", image] })
      : await startQemuNbd({ image });
  cleanups.push(() => peer.stop());
  return { uri: peer.uri, kill: () => process.kill(peer.pid, "SIGKILL") };
}

async function runTrial(t: Trial, cleanups: Cleanup[]): Promise<TrialResult> {
  const rng = createRng(t.seed);
  const dir = await mkdtemp(join(tmpdir(), "peercopy-oracle-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const secondaryImage = join(dir, "secondary.img");
  const primaryImage = join(dir, "primary.img");

  // The primary starts while the secondary does; its link waits in the proxy.
  const secondaryStarted = startSecondary(t.secondary, secondaryImage, cleanups);
  const target = secondaryStarted.then((s) => parseNbdUri(s.uri));
  // Distance: each way of the link is 0 to 4 ms long.
  const latencyMs = rng.int(0, 4);
  const proxy = await LinkProxy.start(
    target.then((u) => u.endpoint),
    latencyMs,
  );
  cleanups.push(() => proxy.refuse());
  const remote = formatNbdUri({
    endpoint: proxy.endpoint,
    exportName: t.secondary === "peercopy" ? "replication" : "",
  });
  const primary = new Controller([
    "primary",
    primaryImage,
    ...["--size", SIZE, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
    ...["--remote", remote, "--mode", t.mode, "--track-size", String(TRACK)],
    ...["--ordered-remote", t.orderedRemote],
  ]);
  cleanups.push(() => {
    primary.kill("SIGKILL");
    return primary.exit;
  });
  const secondary = await secondaryStarted;
  expect((await target).exportName).toBe(t.secondary === "peercopy" ? "replication" : "");
  const hostUri = String((await primary.record("listening")).uri);
  const adminRecord = await primary.record("admin API");
  const statusUrl = String(adminRecord.status);
  const adminToken = (await readFile(String(adminRecord.tokenFile), "utf8")).trim();
  await waitForPairState(statusUrl, "full-duplex", 30_000);
  const ordered = ((await status(statusUrl)).link as LogRecord).ordered;

  const client = await connectUri(hostUri);
  cleanups.push(() => client.destroy());
  const runTag = rng.int(1, 2 ** 32 - 1);
  // A region at a random place, not track aligned, so writes cross tracks.
  const regionSize = REGIONS[rng.int(0, REGIONS.length - 1)] as number;
  const regionOffset =
    rng.int(0, (SIZE_BYTES - regionSize) / 4096 - 1) * 4096 + rng.int(0, 7) * 512;
  const workload = new HostWorkload(
    { seed: t.seed, runTag, regionOffset, regionSize, trackSize: TRACK, maxWrites: 4000 },
    { write: (data, offset) => client.write(data, offset) },
  );
  workload.start();
  const cutAfter = rng.int(50, 700);
  await within(workload.whenIssued(cutAfter), 30_000, "the workload");
  await sleep(rng.int(0, 10));

  // Host writes go on during the cut; those acknowledged before it are on record.
  const acksAtCut = workload.acks;
  proxy.refuse();
  if (t.cut === "link-cut") {
    const res = await fetch(statusUrl.replace(/\/status$/, "/link/cut"), {
      method: "POST",
      headers: { authorization: `Bearer ${adminToken}` },
    });
    if (res.status !== 200) throw new Error(`POST /link/cut: ${res.status}`);
  } else if (t.cut === "network") proxy.drop();
  else if (t.cut === "primary-kill") primary.kill("SIGKILL");
  else secondary.kill();
  workload.stopIssuing();
  await within(workload.settled(), 20_000, "host writes in flight at the cut");
  client.destroy();

  let pairStateAfterCut: string | undefined;
  let primaryExit: string | undefined;
  if (t.cut === "primary-kill") primaryExit = await within(primary.exit, 10_000, "the primary");
  else {
    await waitForPairState(statusUrl, "suspended", 10_000);
    pairStateAfterCut = "suspended";
  }
  await within(proxy.quiesced(), 15_000, "the secondary closing the link");
  if (t.cut !== "secondary-kill") {
    const settle = await connectUri(secondary.uri);
    await settle.flush();
    await settle.close();
  }

  const [secondaryBytes, primaryBytes] = await Promise.all([
    readFile(secondaryImage),
    readFile(primaryImage),
  ]);
  const writes = workload.writes;
  const onSecondary = checkWriteOrder({
    runTag,
    writes,
    image: secondaryBytes,
    trackSize: TRACK,
    ...(t.mode === "sync" ? { acksAtCut } : {}),
    // The secondary took in a prefix of the stream and applied all of it, unless it crashed.
    trackOrder: t.cut !== "secondary-kill",
  });
  // The harness checks itself: the primary's volume holds every acknowledged write.
  const onPrimary = checkWriteOrder({
    runTag,
    writes,
    image: primaryBytes,
    trackSize: TRACK,
    acksAtCut: workload.acks,
  });
  return {
    secondary: onSecondary,
    primary: onPrimary,
    ordered,
    pairStateAfterCut,
    primaryExit,
    setup: `latency ${latencyMs} ms, cut after ${cutAfter} writes, ${regionSize / 1024} KiB region at ${regionOffset}`,
  };
}

/** At most `n` trials at once: each runs three processes on a two-core machine. */
function limiter(n: number): <T>(task: () => Promise<T>) => Promise<T> {
  let running = 0;
  const waiting: (() => void)[] = [];
  return async (task) => {
    while (running >= n) await new Promise<void>((r) => waiting.push(r));
    running++;
    try {
      return await task();
    } finally {
      running--;
      waiting.shift()?.();
    }
  };
}

// --- the matrix ---

const ALL_CUTS: Cut[] = ["link-cut", "network", "primary-kill", "secondary-kill"];

interface Combination {
  readonly secondary: SecondaryKind;
  readonly orderedRemote: "auto" | "no";
  readonly modes: readonly Mode[];
  readonly cuts: readonly Cut[];
}

const COMBINATIONS: Combination[] = [
  { secondary: "peercopy", orderedRemote: "auto", modes: ["sync", "async"], cuts: ALL_CUTS },
  ...(requireTool("nbdkit")
    ? [
        {
          secondary: "nbdkit",
          orderedRemote: "auto",
          modes: ["sync", "async"],
          cuts: ALL_CUTS,
        } as const,
      ]
    : []),
  // qemu-nbd, like nbdkit, runs requests in flight concurrently: async is the mode where
  // the link's barriers matter.
  ...(requireTool("qemu-nbd")
    ? [
        {
          secondary: "qemu-nbd",
          orderedRemote: "auto",
          modes: ["async"],
          cuts: ["network", "secondary-kill"],
        } as const,
      ]
    : []),
  // A peercopy secondary treated as any NBD server: barriers instead of arrival order.
  { secondary: "peercopy", orderedRemote: "no", modes: ["async"], cuts: ["secondary-kill"] },
];
const slot = limiter(2);

afterAll(stopPeers);

beforeAll(() => {
  if (!existsSync(PEERCOPY_MAIN))
    throw new Error(`${PEERCOPY_MAIN} does not exist: run \`npm run build\` first`);
});

describe("write-order fidelity oracle", () => {
  for (const { secondary, orderedRemote, modes, cuts } of COMBINATIONS)
    for (const mode of modes)
      for (const cut of cuts) {
        const how = orderedRemote === "no" ? " (--ordered-remote no)" : "";
        const title = `${secondary} secondary${how}, ${mode}, ${cut}`;
        it.concurrent(title, { timeout: 90_000 * TRIALS }, async ({ expect }) => {
          for (let i = 0; i < TRIALS; i++) {
            const trial = { secondary, orderedRemote, mode, cut, seed: trialSeed(i) };
            const name = `seed ${trial.seed}, ${title}`;
            const cleanups: Cleanup[] = [];
            const r = await slot(async () => {
              try {
                return await runTrial(trial, cleanups);
              } finally {
                for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => 0);
              }
            });
            console.log(`${name} (${r.setup}): ${describeReport(r.secondary)}`);
            expect(r.primary.violations, `${name}: primary\n${describeReport(r.primary)}`).toEqual(
              [],
            );
            expect(r.secondary.violations, `${name}\n${describeReport(r.secondary)}`).toEqual([]);
            // Only peercopy's own secondary may have dependent writes in flight together.
            expect(r.ordered).toBe(secondary === "peercopy" && orderedRemote === "auto");
            expect(r.secondary.present).toBeGreaterThan(0);
            if (cut === "primary-kill") expect(r.primaryExit).toBe("SIGKILL");
            else expect(r.pairStateAfterCut).toBe("suspended");
          }
        });
      }
});
