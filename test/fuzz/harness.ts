// The fuzzer: generated NBD sessions (fast-check) and mutations of real ones
// (test/fuzz/corpus, recorded from nbdinfo, qemu-img, qemu-io and fio) sent to
// a live server process over loopback, many connections at once, while a
// well-behaved client writes its own export on the same server and checks at
// the end that it holds exactly what it wrote. Counts inputs, crashes (the
// server process exiting) and the server's peak RSS.
//
// Used by test/fuzz/server-fuzz.test.ts (a few seconds in `npm test`) and by
// scripts/fuzz.ts (`npm run fuzz -- --duration 10m`).
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa, type ResultPromise } from "execa";
import fc from "fast-check";
import { connectUri, type NbdClient } from "../../nbd/client/index.js";

export const CORPUS_DIR = join(import.meta.dirname, "corpus");
const TARGET = join(import.meta.dirname, "target.mjs");
/** The size of every export of the target (target.mjs). */
export const EXPORT_SIZE = 16 * 1024 * 1024;
const MiB = 1024 * 1024;

export interface Session {
  readonly name: string;
  /** What the client sent. */
  readonly c2s: Buffer;
  /** What the server answered. */
  readonly s2c: Buffer;
}

export async function loadCorpus(dir = CORPUS_DIR): Promise<Session[]> {
  const names = (await readdir(dir)).filter((f) => f.endsWith(".c2s.bin")).sort();
  return Promise.all(
    names.map(async (f) => {
      const name = f.slice(0, -".c2s.bin".length);
      return {
        name,
        c2s: await readFile(join(dir, f)),
        s2c: await readFile(join(dir, `${name}.s2c.bin`)),
      };
    }),
  );
}

/** mulberry32: small, seeded, good enough to pick mutations. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

// --- generated sessions (fast-check) ---

const IHAVEOPT = 0x49484156454f5054n;
const REQUEST_MAGIC = 0x25609513;
const INTERESTING_U32 = [
  0,
  1,
  2,
  0x7fff_ffff,
  0x8000_0000,
  0xffff_ffff,
  4096,
  32 * MiB,
  32 * MiB + 1,
];

const u32 = fc.oneof(fc.constantFrom(...INTERESTING_U32), fc.integer({ min: 0, max: 0xffff_ffff }));
const u16 = fc.integer({ min: 0, max: 0xffff });
const name = fc.oneof(
  fc.constantFrom("", "ro", "nope", "replication"),
  fc.string({ maxLength: 16 }),
  fc.constant("x".repeat(5000)),
);

function header(option: number, length: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(length >>> 0, 12);
  return b;
}

function str(s: string): Buffer {
  const b = Buffer.from(s, "utf8");
  const len = Buffer.alloc(4);
  len.writeUInt32BE(b.length);
  return Buffer.concat([len, b]);
}

const goData = fc.tuple(name, fc.array(u16, { maxLength: 4 })).map(([n, infos]) => {
  const count = Buffer.alloc(2);
  count.writeUInt16BE(infos.length);
  return Buffer.concat([str(n), count, ...infos.map((i) => Buffer.from([i >> 8, i & 255]))]);
});

const metaData = fc
  .tuple(
    name,
    fc.array(
      fc.oneof(
        fc.constantFrom("base:allocation", "base:", "peercopy:out-of-sync", "nonamespace"),
        fc.string({ maxLength: 20 }),
      ),
      { maxLength: 4 },
    ),
  )
  .map(([n, queries]) => {
    const count = Buffer.alloc(4);
    count.writeUInt32BE(queries.length);
    return Buffer.concat([str(n), count, ...queries.map(str)]);
  });

const option = fc
  .record({
    option: fc.oneof(fc.integer({ min: 0, max: 12 }), u32),
    data: fc.oneof(
      goData,
      metaData,
      fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
    ),
    // Sometimes the header claims a length the data does not have.
    claimed: fc.option(u32, { freq: 8 }),
  })
  .map((o) =>
    Buffer.concat([header(o.option, o.claimed ?? o.data.length), o.data.subarray(0, 4096)]),
  );

const request = fc
  .record({
    magic: fc.oneof(fc.constant(REQUEST_MAGIC), fc.constant(REQUEST_MAGIC), u32),
    flags: fc.oneof(fc.constantFrom(0, 1, 2, 4, 8, 16, 32), u16),
    type: fc.oneof(fc.integer({ min: 0, max: 8 }), u16),
    cookie: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    offset: fc.oneof(
      fc.constantFrom(
        0n,
        4096n,
        BigInt(EXPORT_SIZE - 1),
        BigInt(EXPORT_SIZE),
        BigInt(EXPORT_SIZE + 4096),
        2n ** 53n,
        2n ** 63n,
        2n ** 64n - 1n,
      ),
      fc.bigInt({ min: 0n, max: BigInt(EXPORT_SIZE) }),
      fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    ),
    length: u32,
    sent: fc.nat({ max: 8192 }),
  })
  .map((r) => {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(r.magic >>> 0, 0);
    h.writeUInt16BE(r.flags, 4);
    h.writeUInt16BE(r.type, 6);
    h.writeBigUInt64BE(r.cookie, 8);
    h.writeBigUInt64BE(r.offset, 16);
    h.writeUInt32BE(r.length >>> 0, 24);
    // A WRITE sends some of its payload: all of a small one, part of a large one.
    const payload = r.type === 1 ? Buffer.alloc(Math.min(r.length, r.sent), 0xa5) : undefined;
    return payload === undefined ? h : Buffer.concat([h, payload]);
  });

/** A whole client session: flags, options, maybe GO or EXPORT_NAME, requests. */
export const sessionArb: fc.Arbitrary<Buffer> = fc
  .record({
    flags: fc.oneof(fc.constant(3), fc.constant(1), fc.constant(0), u32),
    structured: fc.boolean(),
    options: fc.array(option, { maxLength: 6 }),
    enter: fc.constantFrom("go", "go", "export-name", "none"),
    exportName: fc.constantFrom("", "", "ro"),
    requests: fc.array(request, { maxLength: 24 }),
  })
  .map((s) => {
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(s.flags >>> 0);
    const parts: Buffer[] = [flags];
    if (s.structured) parts.push(header(8, 0));
    parts.push(...s.options);
    const nameBytes = Buffer.from(s.exportName);
    if (s.enter === "go") {
      const data = Buffer.concat([str(s.exportName), Buffer.alloc(2)]);
      parts.push(header(7, data.length), data);
    } else if (s.enter === "export-name") parts.push(header(1, nameBytes.length), nameBytes);
    parts.push(...s.requests);
    return Buffer.concat(parts);
  });

// --- mutations of recorded sessions ---

const INTERESTING_BYTES = [0, 1, 0x7f, 0x80, 0xff];

/** One to four random edits of `input`, sometimes spliced with another session. */
export function mutate(rng: Rng, input: Buffer, others: readonly Buffer[]): Buffer {
  let b = Buffer.from(input);
  const edits = 1 + rng.int(4);
  for (let e = 0; e < edits; e++) {
    const at = b.length === 0 ? 0 : rng.int(b.length);
    switch (rng.int(9)) {
      case 0: // flip a bit
        if (b.length > 0) b[at] = (b[at] as number) ^ (1 << rng.int(8));
        break;
      case 1: // an interesting byte
        if (b.length > 0) b[at] = rng.pick(INTERESTING_BYTES);
        break;
      case 2: // an interesting 32-bit field, at a 4-byte boundary as most fields are
        if (b.length >= 4) b.writeUInt32BE(rng.pick(INTERESTING_U32), (at & ~3) % (b.length - 3));
        break;
      case 3: // insert random bytes
        b = Buffer.concat([b.subarray(0, at), rng.bytes(1 + rng.int(32)), b.subarray(at)]);
        break;
      case 4: // delete a range
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1 + rng.int(64))]);
        break;
      case 5: // duplicate a range (a repeated option or request)
        {
          const len = 1 + rng.int(Math.min(256, b.length - at + 1));
          b = Buffer.concat([
            b.subarray(0, at + len),
            b.subarray(at, at + len),
            b.subarray(at + len),
          ]);
        }
        break;
      case 6: // truncate
        b = b.subarray(0, at);
        break;
      case 7: // splice with another session
        if (others.length > 0) {
          const other = rng.pick(others);
          b = Buffer.concat([b.subarray(0, at), other.subarray(rng.int(other.length + 1))]);
        }
        break;
      default: // overwrite a run with random bytes
        rng.bytes(Math.min(16, b.length - at)).copy(b, at);
    }
  }
  return b;
}

/** Split `length` bytes into chunks the way a network might deliver them. */
export function chunking(rng: Rng, length: number): number[] {
  const sizes: number[] = [];
  let left = length;
  const style = rng.int(3);
  while (left > 0) {
    const n =
      style === 0 ? left : style === 1 ? 1 + rng.int(Math.min(left, 64)) : 1 + rng.int(left);
    sizes.push(n);
    left -= n;
  }
  return sizes;
}

// --- the live server ---

export interface FuzzOptions {
  /** Stop after this long, or after maxInputs, whichever comes first. */
  readonly durationMs?: number;
  readonly maxInputs?: number;
  readonly seed: number;
  /** Fuzzing connections at once (default 4). */
  readonly workers?: number;
  /** Where the inputs being sent when the server crashed are written. */
  readonly crashDir?: string;
  /** Progress lines. */
  readonly progress?: (report: FuzzReport) => void;
}

export interface FuzzReport {
  readonly seed: number;
  inputs: number;
  generated: number;
  mutated: number;
  bytesSent: number;
  /** Inputs after which the server closed the connection itself. */
  closedByServer: number;
  /** The server process exited during the run. */
  crashes: number;
  crashInputs: string[];
  /** Peak resident set of the server process (VmHWM), bytes. */
  maxRssBytes: number;
  /** Its resident set at the last sample (VmRSS), bytes. */
  rssBytes: number;
  /** Writes the well-behaved client made, and whether its export ended exactly as written. */
  validWrites: number;
  validExact: boolean;
  validError: string | null;
  /** A new client could use the server after the run. */
  serverResponsive: boolean;
  durationMs: number;
}

interface Target {
  readonly child: ResultPromise;
  readonly port: number;
  readonly secret: string;
  exited: boolean;
  stderr: string;
}

async function startTarget(dir: string): Promise<Target> {
  const built = join(import.meta.dirname, "../../dist/nbd/server/server.js");
  if (!existsSync(built)) throw new Error(`${built} is missing: run \`npm run build\` first`);
  const psk = join(dir, "fuzz.psk");
  await writeFile(psk, `fuzz:${randomBytes(32).toString("hex")}\n`);
  const secret = `valid-${randomBytes(8).toString("hex")}`;
  const child = execa(process.execPath, [TARGET, psk, secret], {
    reject: false,
    buffer: false,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    cleanup: true,
  });
  let stderr = "";
  child.stderr?.on("data", (c: Buffer) => (stderr = (stderr + c.toString()).slice(-64 * 1024)));
  const line = await new Promise<string>((resolve, reject) => {
    let out = "";
    child.stdout?.on("data", (c: Buffer) => {
      out += c.toString();
      const nl = out.indexOf("\n");
      if (nl >= 0) resolve(out.slice(0, nl));
    });
    void child.then(() => reject(new Error(`the fuzz target exited at start:\n${stderr}`)));
  });
  const port = (JSON.parse(line) as { port: number }).port;
  const target: Target = { child, port, secret, exited: false, stderr };
  void child.then(() => {
    target.exited = true;
    target.stderr = stderr;
  });
  return target;
}

/** The process's peak (VmHWM) and current (VmRSS) resident set, bytes. */
async function rss(pid: number | undefined): Promise<{ peak: number; now: number }> {
  if (pid === undefined) return { peak: 0, now: 0 };
  try {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    const kb = (field: string): number =>
      Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) * 1024;
    return { peak: kb("VmHWM"), now: kb("VmRSS") };
  } catch {
    return { peak: 0, now: 0 };
  }
}

/** Send one input on a new connection; resolves when the server hangs up or goes quiet. */
async function sendInput(port: number, input: Buffer, rng: Rng): Promise<boolean> {
  const socket = net.connect(port, "127.0.0.1");
  socket.on("error", () => undefined);
  let closed = false;
  let lastData = performance.now();
  socket.on("data", () => (lastData = performance.now()));
  socket.on("close", () => (closed = true));
  try {
    await once(socket, "connect");
  } catch {
    return false;
  }
  let at = 0;
  for (const n of chunking(rng, input.length)) {
    if (closed) break;
    socket.write(input.subarray(at, at + n));
    at += n;
    if (rng.int(4) === 0) await new Promise((r) => setImmediate(r));
  }
  const start = performance.now();
  lastData = Math.max(lastData, start);
  while (!closed && performance.now() - lastData < 20 && performance.now() - start < 1000)
    await new Promise((r) => setTimeout(r, 5));
  const byServer = closed;
  socket.destroy();
  return byServer;
}

/** The well-behaved client: random writes to its own export, then a full read-back. */
async function validClient(
  target: Target,
  seed: number,
  stop: () => boolean,
  counted: (writes: number) => void,
): Promise<{ writes: number; exact: boolean; error: string | null }> {
  const rng = new Rng(seed ^ 0x5eed);
  const model = Buffer.alloc(EXPORT_SIZE);
  let client: NbdClient | undefined;
  let writes = 0;
  try {
    client = await connectUri(`nbd://127.0.0.1:${target.port}/${target.secret}`);
    while (!stop()) {
      const blocks = EXPORT_SIZE / 4096;
      const length = (1 + rng.int(16)) * 4096;
      const offset = rng.int(blocks - length / 4096) * 4096;
      if (rng.int(8) === 0) {
        await client.zero(offset, length);
        model.fill(0, offset, offset + length);
      } else {
        const data = rng.bytes(length);
        await client.write(data, offset);
        data.copy(model, offset);
      }
      counted(++writes);
      if (rng.int(4) === 0) await new Promise((r) => setTimeout(r, 1));
    }
    await client.flush();
    const back = Buffer.alloc(MiB);
    for (let at = 0; at < EXPORT_SIZE; at += MiB) {
      await client.read(back, at);
      if (!back.equals(model.subarray(at, at + MiB)))
        return { writes, exact: false, error: `the valid client's data differs in ${at}+1M` };
    }
    return { writes, exact: true, error: null };
  } catch (err) {
    return { writes, exact: false, error: (err as Error).message };
  } finally {
    client?.destroy();
  }
}

export async function fuzzServer(options: FuzzOptions): Promise<FuzzReport> {
  const dir = await mkdtemp(join(tmpdir(), "peercopy-fuzz-"));
  const corpus = (await loadCorpus()).map((s) => s.c2s);
  const target = await startTarget(dir);
  const rng = new Rng(options.seed);
  const started = performance.now();
  const report: FuzzReport = {
    seed: options.seed,
    inputs: 0,
    generated: 0,
    mutated: 0,
    bytesSent: 0,
    closedByServer: 0,
    crashes: 0,
    crashInputs: [],
    maxRssBytes: 0,
    rssBytes: 0,
    validWrites: 0,
    validExact: false,
    validError: null,
    serverResponsive: false,
    durationMs: 0,
  };
  const deadline = started + (options.durationMs ?? Infinity);
  const maxInputs = options.maxInputs ?? Infinity;
  const done = (): boolean =>
    target.exited || performance.now() >= deadline || report.inputs >= maxInputs;

  const rssTimer = setInterval(() => {
    void rss(target.child.pid).then((r) => {
      report.maxRssBytes = Math.max(report.maxRssBytes, r.peak);
      report.rssBytes = r.now;
      options.progress?.(report);
    });
  }, 1000);

  // Generated inputs come from fast-check in batches, each batch its own seed.
  let batch: Buffer[] = [];
  let batchNo = 0;
  const nextInput = (): Buffer => {
    if (rng.int(2) === 0 && corpus.length > 0) {
      report.mutated++;
      return mutate(rng, rng.pick(corpus), corpus);
    }
    if (batch.length === 0)
      batch = fc.sample(sessionArb, { seed: options.seed + ++batchNo, numRuns: 64 });
    report.generated++;
    return batch.pop() as Buffer;
  };

  const sending = new Set<Buffer>();
  const worker = async (w: number): Promise<void> => {
    const wrng = new Rng(options.seed + w * 7919);
    while (!done()) {
      const input = nextInput();
      report.inputs++;
      report.bytesSent += input.length;
      sending.add(input);
      if (await sendInput(target.port, input, wrng)) report.closedByServer++;
      sending.delete(input);
      if (target.exited) {
        // Keep what was on the wire for reproduction.
        for (const b of [input, ...sending]) report.crashInputs.push(b.toString("base64"));
      }
    }
  };
  const valid = validClient(target, options.seed, done, (n) => (report.validWrites = n));
  await Promise.all(Array.from({ length: options.workers ?? 4 }, (_, w) => worker(w)));
  const validResult = await valid;
  clearInterval(rssTimer);
  const last = await rss(target.child.pid);
  report.maxRssBytes = Math.max(report.maxRssBytes, last.peak);
  report.rssBytes = last.now;
  report.validWrites = validResult.writes;
  report.validExact = validResult.exact;
  report.validError = validResult.error;

  if (target.exited) {
    report.crashes = 1;
    if (options.crashDir !== undefined) {
      await mkdir(options.crashDir, { recursive: true });
      const file = join(options.crashDir, `crash-${options.seed}-${Date.now()}.json`);
      await writeFile(file, JSON.stringify({ stderr: target.stderr, inputs: report.crashInputs }));
    }
  } else {
    try {
      const probe = await connectUri(`nbd://127.0.0.1:${target.port}/`, { timeoutMs: 5000 });
      await probe.read(Buffer.alloc(4096), 0);
      probe.destroy();
      report.serverResponsive = true;
    } catch {
      report.serverResponsive = false;
    }
    target.child.kill("SIGTERM");
    await target.child;
  }
  await rm(dir, { recursive: true, force: true });
  report.durationMs = Math.round(performance.now() - started);
  return report;
}
