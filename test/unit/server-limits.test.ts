// The server's limits over loopback sockets, each with a client that tries to
// hold memory or a slot: silent in the handshake, too many connections or
// options, a WRITE payload that never ends, a flood of requests in one chunk,
// a client that asks for reads and never takes the replies. Every limit frees
// what it must and is logged; a well-behaved client gets through afterwards.
import { once } from "node:events";
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import {
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_REP_ACK,
} from "../../nbd/constants.js";
import type { Logger } from "../../nbd/logger.js";
import { NbdServer, type ServerLimits } from "../../nbd/server/server.js";
import { Filter } from "../../src/backend/filter.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import { parseLimitArgs } from "../../src/cli/limit-options.js";
import {
  clientFlags,
  goData,
  optionReplyHeader,
  optionRequest,
  request,
  simpleReplyHeader,
} from "../helpers/nbd-fixtures.js";

const SIZE = 64 * 1024 * 1024;
const KiB = 1024;
const MiB = 1024 * KiB;

/** Writes wait on a gate; counts what the volume is asked while it is shut. */
class GatedVolume extends Filter {
  running = 0;
  most = 0;
  reads = 0;
  private open = false;
  private waiting: (() => void)[] = [];

  constructor() {
    super(new MemoryBackend(SIZE));
  }

  override async write(data: Buffer, offset: number, flags: number): Promise<void> {
    this.running++;
    this.most = Math.max(this.most, this.running);
    if (!this.open) await new Promise<void>((r) => this.waiting.push(r));
    this.running--;
    return super.write(data, offset, flags);
  }

  override read(into: Buffer, offset: number): Promise<void> {
    this.reads++;
    return super.read(into, offset);
  }

  release(): void {
    this.open = true;
    for (const w of this.waiting.splice(0)) w();
  }
}

interface Logged {
  readonly level: "info" | "warn";
  readonly msg: string;
  readonly fields: Record<string, unknown>;
}

const servers: NbdServer[] = [];
const sockets: net.Socket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function start(limits: Partial<ServerLimits>, volume = new GatedVolume()) {
  const logged: Logged[] = [];
  const record =
    (level: Logged["level"]) =>
    (obj: object | string, msg?: string): void => {
      if (typeof obj === "string") logged.push({ level, msg: obj, fields: {} });
      else logged.push({ level, msg: msg ?? "", fields: obj as Record<string, unknown> });
    };
  const logger: Logger = {
    debug: () => undefined,
    error: () => undefined,
    info: record("info"),
    warn: record("warn"),
  };
  const server = new NbdServer({
    exports: [{ name: "", description: "", volume }],
    logger,
    limits,
  });
  servers.push(server);
  const l = await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 });
  const port = l.endpoint.kind === "tcp" ? l.endpoint.port : 0;
  return { server, volume, logged, port };
}

/** A raw client socket: bytes in order, and whether the server hung up. */
class Raw {
  private buf = Buffer.alloc(0);
  ended = false;
  private wake: (() => void) | undefined;

  constructor(readonly socket: net.Socket) {
    socket.on("data", (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      this.wake?.();
    });
    socket.on("close", () => {
      this.ended = true;
      this.wake?.();
    });
    socket.on("error", () => undefined);
  }

  async take(n: number): Promise<Buffer> {
    for (let i = 0; this.buf.length < n; i++) {
      if (this.ended) throw new Error(`closed with ${this.buf.length} of ${n} bytes`);
      if (i > 500) throw new Error(`no ${n} bytes after 10 s`);
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 20);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** True once the server closed the connection (bounded wait). */
  async closed(): Promise<boolean> {
    for (let i = 0; i < 250 && !this.ended; i++) await new Promise((r) => setTimeout(r, 20));
    return this.ended;
  }
}

async function connect(port: number): Promise<Raw> {
  const socket = net.connect(port, "127.0.0.1");
  sockets.push(socket);
  const raw = new Raw(socket);
  await once(socket, "connect");
  return raw;
}

/** Connect and negotiate up to transmission of the default export. */
async function transmission(port: number): Promise<Raw> {
  const r = await connect(port);
  await r.take(18);
  r.socket.write(clientFlags(3));
  r.socket.write(optionRequest(NBD_OPT_GO, goData("", [])));
  for (;;) {
    const h = optionReplyHeader(await r.take(20));
    await r.take(h.length);
    if (h.type === NBD_REP_ACK) return r;
  }
}

async function until(ok: () => boolean, what: string): Promise<void> {
  for (let i = 0; !ok(); i++) {
    if (i > 500) throw new Error(`not ${what} after 10 s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function hits(logged: Logged[], limit: string): Logged[] {
  return logged.filter((l) => l.fields.limit === limit);
}

describe("NBD server limits", () => {
  it("a silent client loses its slot at the handshake timeout", async () => {
    const s = await start({ handshakeTimeoutMs: 200 });
    const silent = await connect(s.port);
    const midOption = await connect(s.port);
    await midOption.take(18);
    midOption.socket.write(clientFlags(3));
    midOption.socket.write(optionRequest(NBD_OPT_LIST).subarray(0, 10));
    expect(await silent.closed()).toBe(true);
    expect(await midOption.closed()).toBe(true);
    expect(s.server.limitHits["handshake-timeout"]).toBe(2);
    const hit = hits(s.logged, "handshake-timeout")[0];
    expect(hit?.level).toBe("warn");
    expect(hit?.msg).toMatch(/did not finish the handshake in time.*--handshake-timeout/);
    await until(() => s.server.connectionCount === 0, "all connections gone");
    // A client that goes straight to transmission is not timed out there.
    const busy = await transmission(s.port);
    await new Promise((r) => setTimeout(r, 400));
    expect(busy.ended).toBe(false);
  });

  it("past --max-connections a new connection is closed at once, and the slot comes back", async () => {
    const s = await start({ maxConnections: 2, handshakeTimeoutMs: 300 });
    const a = await transmission(s.port);
    await connect(s.port);
    await until(() => s.server.connectionCount === 2, "two connections");
    const third = await connect(s.port);
    expect(await third.closed()).toBe(true);
    expect(s.server.limitHits.connections).toBe(1);
    expect(hits(s.logged, "connections")[0]?.fields).toMatchObject({ max: 2 });
    // The silent one times out; its slot takes a new client.
    await until(() => s.server.connectionCount === 1, "the silent one timed out");
    const fourth = await transmission(s.port);
    expect(fourth.ended).toBe(false);
    expect(a.ended).toBe(false);
  });

  it("past --max-options the connection is closed after the last answer", async () => {
    const s = await start({ maxOptions: 5 });
    const r = await connect(s.port);
    await r.take(18);
    r.socket.write(clientFlags(3));
    const flood = Buffer.concat(Array.from({ length: 50 }, () => optionRequest(NBD_OPT_LIST)));
    r.socket.write(flood);
    let acks = 0;
    try {
      for (;;) {
        const h = optionReplyHeader(await r.take(20));
        await r.take(h.length);
        if (h.type === NBD_REP_ACK) acks++;
      }
    } catch {
      // closed
    }
    expect(acks).toBe(5);
    expect(await r.closed()).toBe(true);
    expect(s.server.limitHits.options).toBe(1);
    expect(hits(s.logged, "options")[0]?.msg).toMatch(/--max-options/);
  });

  it("a WRITE payload that stops arriving ends the connection at --payload-timeout", async () => {
    const s = await start({ payloadTimeoutMs: 200 });
    s.volume.release();
    const r = await transmission(s.port);
    r.socket.write(request({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 4 * MiB }));
    r.socket.write(Buffer.alloc(1000));
    expect(await r.closed()).toBe(true);
    expect(s.server.limitHits["payload-timeout"]).toBe(1);
    // A slow but finished payload is fine.
    const ok = await transmission(s.port);
    ok.socket.write(request({ type: NBD_CMD_WRITE, cookie: 2n, offset: 0, length: 2000 }));
    ok.socket.write(Buffer.alloc(1000, 7));
    await new Promise((res) => setTimeout(res, 100));
    ok.socket.write(Buffer.alloc(1000, 7));
    expect(simpleReplyHeader(await ok.take(16)).error).toBe(0);
  });

  it("a flood of WRITEs in one chunk stops at --max-in-flight, then all complete", async () => {
    // 4 KiB writes: a 64 KiB chunk carries fifteen of them past the point to stop.
    const s = await start({ maxInFlightBytes: 16 * KiB });
    const r = await transmission(s.port);
    const n = 256;
    const flood = Buffer.concat(
      Array.from({ length: n }, (_, i) =>
        request(
          { type: NBD_CMD_WRITE, cookie: BigInt(i), offset: i * 4 * KiB, length: 4 * KiB },
          Buffer.alloc(4 * KiB, i),
        ),
      ),
    );
    r.socket.write(flood);
    await until(() => s.volume.running >= 4, "four writes running");
    await new Promise((res) => setTimeout(res, 100));
    expect(s.volume.most).toBe(4);
    expect(s.server.inFlightBytes).toBe(16 * KiB);
    expect(hits(s.logged, "in-flight")[0]?.level).toBe("info");
    s.volume.release();
    for (let i = 0; i < n; i++) expect(simpleReplyHeader(await r.take(16)).error).toBe(0);
    expect(s.server.inFlightBytes).toBe(0);
    const back = Buffer.alloc(4 * KiB);
    await s.volume.read(back, (n - 1) * 4 * KiB);
    expect(back.every((b) => b === (n - 1) % 256)).toBe(true);
  });

  it("--max-total-in-flight holds all connections together", async () => {
    const s = await start({ maxInFlightBytes: 64 * MiB, maxTotalInFlightBytes: 256 * KiB });
    const clients = [await transmission(s.port), await transmission(s.port)];
    clients.forEach((r, c) =>
      r.socket.write(
        Buffer.concat(
          Array.from({ length: 8 }, (_, i) =>
            request(
              {
                type: NBD_CMD_WRITE,
                cookie: BigInt(i),
                offset: (c * 8 + i) * 64 * KiB,
                length: 64 * KiB,
              },
              Buffer.alloc(64 * KiB, 1),
            ),
          ),
        ),
      ),
    );
    await until(() => s.volume.running >= 4, "four writes running");
    await new Promise((res) => setTimeout(res, 100));
    // One request may go past the budget on each connection that had not yet stopped.
    expect(s.volume.most).toBeLessThanOrEqual(5);
    expect(s.server.limitHits["total-in-flight"]).toBeGreaterThan(0);
    s.volume.release();
    for (const r of clients)
      for (let i = 0; i < 8; i++) expect(simpleReplyHeader(await r.take(16)).error).toBe(0);
    expect(s.server.inFlightBytes).toBe(0);
  });

  it("a client that asks for reads and never takes the replies holds a bounded amount", async () => {
    const s = await start({ maxInFlightBytes: 4 * MiB });
    s.volume.release();
    const r = await transmission(s.port);
    r.socket.pause();
    const n = 2000;
    r.socket.write(
      Buffer.concat(
        Array.from({ length: n }, (_, i) =>
          request({ type: NBD_CMD_READ, cookie: BigInt(i), offset: 0, length: MiB }),
        ),
      ),
    );
    // Wait until the server stops answering: reads done stop growing.
    let last = -1;
    for (let i = 0; i < 100 && s.volume.reads !== last; i++) {
      last = s.volume.reads;
      await new Promise((res) => setTimeout(res, 100));
    }
    // Socket buffers in the kernel take some; the server holds at most its limit.
    expect(s.volume.reads).toBeLessThan(200);
    expect(s.server.inFlightBytes).toBeLessThanOrEqual(4 * MiB + MiB);
    r.socket.destroy();
    await until(() => s.server.inFlightBytes === 0, "the held bytes released");
  });
});

describe("limit flags", () => {
  it("set the limits they name", () => {
    expect(
      parseLimitArgs({
        "max-connections": "8",
        "handshake-timeout": "2s",
        "max-options": "16",
        "max-in-flight": "8M",
        "max-total-in-flight": "64M",
        "payload-timeout": "500ms",
      }),
    ).toEqual({
      maxConnections: 8,
      handshakeTimeoutMs: 2000,
      maxOptions: 16,
      maxInFlightBytes: 8 * MiB,
      maxTotalInFlightBytes: 64 * MiB,
      payloadTimeoutMs: 500,
    });
    expect(parseLimitArgs({})).toEqual({});
  });

  it.each([
    [{ "max-connections": "0" }, /--max-connections "0": give a whole number of at least 1/],
    [{ "max-options": "many" }, /--max-options "many"/],
    [{ "handshake-timeout": "0" }, /--handshake-timeout: give a duration above zero/],
    [{ "payload-timeout": "soon" }, /--payload-timeout: "soon" is not a duration/],
    [{ "max-in-flight": "0" }, /--max-in-flight: "0" must be a positive size/],
  ])("refuse %j", (values, message) => {
    expect(() => parseLimitArgs(values)).toThrow(message);
  });
});
