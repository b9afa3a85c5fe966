// NbdClient against a scripted server over an in-memory stream: handshake
// fallbacks, pipelining, replies out of order, errors, limits, emulation,
// backpressure and shutdown, all checked on the bytes the client sends.
import { Duplex } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import { NbdClient, NbdDisconnectedError, NbdHandshakeError } from "../../nbd/client/index.js";
import { NbdProtocolError, NbdRequestError } from "../../nbd/errors.js";

const IHAVEOPT = Buffer.from("IHAVEOPT");
const NBDMAGIC = Buffer.from("NBDMAGIC");
const OPT_REPLY_MAGIC = Buffer.from("0003e889045565a9", "hex");
const ACK = 1;
const REP_INFO = 3;
const REP_META_CONTEXT = 4;
const ERR_UNSUP = 2 ** 31 + 1;
const ERR_UNKNOWN = 2 ** 31 + 6;
const HAS_FLAGS = 1;
const SEND_FLUSH = 4;
const ALL_FLAGS = 0x0d6d; // flush, fua, trim, write zeroes, df, multi-conn, cache, fast zero
const CMD_READ = 0;
const CMD_WRITE = 1;
const CMD_DISC = 2;
const CMD_FLUSH = 3;
const FUA = 1;
const FAST_ZERO = 16;

/** Two connected in-memory stream ends. Writes to an end can be held to build backpressure. */
class End extends Duplex {
  peer!: End;
  held: (() => void)[] | undefined;
  private ended = false;
  constructor() {
    super({ writableHighWaterMark: 16 * 1024 });
  }
  override _read(): void {}
  override _write(chunk: Buffer, _encoding: string, done: () => void): void {
    this.peer.push(chunk);
    if (this.held === undefined) done();
    else this.held.push(done);
  }
  override _final(done: () => void): void {
    this.peer.finish();
    done();
  }
  override _destroy(err: Error | null, done: (err: Error | null) => void): void {
    this.peer.finish();
    done(err);
  }
  finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.push(null);
  }
}

function pair(): [End, End] {
  const a = new End();
  const b = new End();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

interface Request {
  flags: number;
  type: number;
  cookie: Buffer;
  offset: number;
  length: number;
  payload: Buffer | undefined;
}

/** The server side of a session, written out by hand. */
class Script {
  private buffered = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  private ended = false;

  constructor(readonly stream: End) {
    stream.on("data", (chunk: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, chunk]);
      this.wake?.();
    });
    stream.on("end", () => {
      this.ended = true;
      this.wake?.();
    });
  }

  get pending(): number {
    return this.buffered.length;
  }

  async read(n: number): Promise<Buffer> {
    while (this.buffered.length < n) {
      if (this.ended) throw new Error(`client hung up; wanted ${n} bytes`);
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    const out = this.buffered.subarray(0, n);
    this.buffered = this.buffered.subarray(n);
    return out;
  }

  async closedByClient(): Promise<boolean> {
    while (!this.ended) await new Promise<void>((resolve) => (this.wake = resolve));
    return this.buffered.length === 0;
  }

  send(...parts: Buffer[]): void {
    this.stream.write(Buffer.concat(parts));
  }

  greet(handshakeFlags: number): void {
    this.send(NBDMAGIC, IHAVEOPT, u16(handshakeFlags));
  }

  async clientFlags(): Promise<number> {
    return (await this.read(4)).readUInt32BE(0);
  }

  async option(): Promise<{ option: number; data: Buffer }> {
    const head = await this.read(16);
    expect(head.subarray(0, 8)).toEqual(IHAVEOPT);
    return { option: head.readUInt32BE(8), data: await this.read(head.readUInt32BE(12)) };
  }

  reply(option: number, type: number, data = Buffer.alloc(0)): void {
    this.send(OPT_REPLY_MAGIC, u32(option), u32(type), u32(data.length), data);
  }

  async request(): Promise<Request> {
    const head = await this.read(28);
    expect(head.readUInt32BE(0)).toBe(0x25609513);
    const type = head.readUInt16BE(6);
    const length = head.readUInt32BE(24);
    return {
      flags: head.readUInt16BE(4),
      type,
      cookie: Buffer.from(head.subarray(8, 16)),
      offset: Number(head.readBigUInt64BE(16)),
      length,
      payload: type === CMD_WRITE ? Buffer.from(await this.read(length)) : undefined,
    };
  }

  simple(cookie: Buffer, error = 0, data?: Buffer): void {
    this.send(u32(0x67446698), u32(error), cookie, data ?? Buffer.alloc(0));
  }

  chunk(cookie: Buffer, flags: number, type: number, payload: Buffer): void {
    this.send(u32(0x668e33ef), u16(flags), u16(type), cookie, u32(payload.length), payload);
  }

  /** A fixed newstyle handshake that grants structured replies, base:allocation and GO. */
  async standardHandshake(
    transmissionFlags: number,
    options: { size?: number; blockSizes?: [number, number, number]; sr?: boolean } = {},
  ): Promise<number[]> {
    this.greet(3);
    expect(await this.clientFlags()).toBe(3);
    const seen: number[] = [];
    for (;;) {
      const { option } = await this.option();
      seen.push(option);
      if (option === 8) {
        this.reply(8, options.sr === false ? ERR_UNSUP : ACK);
      } else if (option === 10) {
        this.reply(10, REP_META_CONTEXT, Buffer.concat([u32(1), Buffer.from("base:allocation")]));
        this.reply(10, ACK);
      } else if (option === 7) {
        const info = Buffer.concat([u16(0), u64(options.size ?? 1 << 20), u16(transmissionFlags)]);
        this.reply(7, REP_INFO, info);
        const sizes = options.blockSizes;
        if (sizes !== undefined)
          this.reply(7, REP_INFO, Buffer.concat([u16(3), ...sizes.map(u32)]));
        this.reply(7, ACK);
        return seen;
      } else {
        throw new Error(`unexpected option ${option}`);
      }
    }
  }
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}
function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

const open: NbdClient[] = [];

async function session(
  serve: (script: Script) => Promise<unknown>,
  options: Parameters<typeof NbdClient.handshake>[1] = {},
): Promise<{ client: NbdClient; script: Script; served: Promise<unknown> }> {
  const [clientEnd, serverEnd] = pair();
  const script = new Script(serverEnd);
  const served = serve(script);
  const client = await NbdClient.handshake(clientEnd, { exportName: "disk", ...options });
  open.push(client);
  return { client, script, served };
}

afterEach(() => {
  for (const client of open.splice(0)) client.destroy();
});

async function rejection(promise: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected a rejection");
}

describe("handshake", () => {
  it("negotiates structured replies, base:allocation and NBD_OPT_GO with NBD_INFO_BLOCK_SIZE", async () => {
    const [clientEnd, serverEnd] = pair();
    const script = new Script(serverEnd);
    const options: { option: number; data: Buffer }[] = [];
    const served = (async () => {
      script.greet(3);
      expect(await script.clientFlags()).toBe(3);
      options.push(await script.option());
      script.reply(8, ACK);
      options.push(await script.option());
      script.reply(10, REP_META_CONTEXT, Buffer.concat([u32(5), Buffer.from("base:allocation")]));
      script.reply(10, ACK);
      options.push(await script.option());
      script.reply(
        7,
        REP_INFO,
        Buffer.concat([u16(0), u64(123 * 512), u16(HAS_FLAGS | ALL_FLAGS)]),
      );
      script.reply(7, REP_INFO, Buffer.concat([u16(3), u32(512), u32(4096), u32(1 << 20)]));
      script.reply(7, ACK);
    })();
    const client = await NbdClient.handshake(clientEnd, { exportName: "disk" });
    open.push(client);
    await served;
    expect(options.map((o) => o.option)).toEqual([8, 10, 7]);
    const query = Buffer.from("base:allocation");
    expect(options[1]?.data).toEqual(
      Buffer.concat([u32(4), Buffer.from("disk"), u32(1), u32(query.length), query]),
    );
    const go = options[2]?.data;
    expect(go).toEqual(Buffer.concat([u32(4), Buffer.from("disk"), u16(2), u16(3), u16(2)]));
    expect(client.size).toBe(123 * 512);
    expect(client.structuredReplies).toBe(true);
    expect(client.metaContexts.get("base:allocation")).toBe(5);
    expect(client.blockSizes).toEqual({ minimum: 512, preferred: 4096, maximum: 1 << 20 });
    expect(client.negotiated.via).toBe("NBD_OPT_GO");
    expect(client.capabilities).toMatchObject({ flush: true, fua: true, trim: true, zero: true });
  });

  it.each([
    ["with NBD_FLAG_NO_ZEROES", 3, 3, 0],
    ["with the 124 zero bytes", 1, 1, 124],
  ])("falls back to NBD_OPT_EXPORT_NAME when GO is unsupported, %s", async (_, hs, cf, pad) => {
    const { client, served } = await session(async (s) => {
      s.greet(hs);
      expect(await s.clientFlags()).toBe(cf);
      expect((await s.option()).option).toBe(8);
      s.reply(8, ERR_UNSUP);
      expect((await s.option()).option).toBe(7);
      s.reply(7, ERR_UNSUP);
      const exportName = await s.option();
      expect(exportName).toEqual({ option: 1, data: Buffer.from("disk") });
      s.send(u64(4096), u16(HAS_FLAGS | SEND_FLUSH), Buffer.alloc(pad));
    });
    await served;
    expect(client.size).toBe(4096);
    expect(client.negotiated.via).toBe("NBD_OPT_EXPORT_NAME");
    expect(client.structuredReplies).toBe(false);
    expect(client.capabilities.blockStatus).toBe(false);
  });

  it("sends only NBD_OPT_EXPORT_NAME to a server without fixed newstyle", async () => {
    const { client, script, served } = await session(async (s) => {
      s.greet(0);
      expect(await s.clientFlags()).toBe(0);
      expect(await s.option()).toEqual({ option: 1, data: Buffer.from("disk") });
      s.send(u64(8192), u16(HAS_FLAGS), Buffer.alloc(124));
    });
    await served;
    expect(client.negotiated.protocol).toBe("newstyle");
    const read = client.read(Buffer.alloc(4), 0);
    const request = await script.request();
    script.simple(request.cookie, 0, Buffer.from("abcd"));
    await read;
  });

  it("uses simple replies and no metadata context when structured replies are refused", async () => {
    const { client, served } = await session((s) => s.standardHandshake(HAS_FLAGS, { sr: false }));
    expect(await served).toEqual([8, 7]);
    expect(client.structuredReplies).toBe(false);
    expect(client.capabilities.blockStatus).toBe(false);
    expect((await rejection(client.blockStatus(0, 512))).code).toBe("ENOTSUP");
  });

  it("reports a refused export and ends with NBD_OPT_ABORT", async () => {
    const [clientEnd, serverEnd] = pair();
    const s = new Script(serverEnd);
    const served = (async () => {
      s.greet(3);
      await s.clientFlags();
      await s.option();
      s.reply(8, ACK);
      await s.option();
      s.reply(10, ACK);
      await s.option();
      s.reply(7, ERR_UNKNOWN, Buffer.from("no export named disk"));
      return s.option();
    })();
    const err = await rejection(NbdClient.handshake(clientEnd, { exportName: "disk" }));
    expect(err).toBeInstanceOf(NbdHandshakeError);
    expect(err.code).toBe("NBD_REP_ERR_UNKNOWN");
    expect(err.message).toMatch(/no export named disk/);
    expect((await served).option).toBe(2);
  });

  it("refuses an oldstyle server", async () => {
    const [clientEnd, serverEnd] = pair();
    serverEnd.write(Buffer.concat([NBDMAGIC, Buffer.from("0000420281861253", "hex")]));
    const err = await rejection(NbdClient.handshake(clientEnd, {}));
    expect(err.code).toBe("NBD_OLDSTYLE");
  });

  it("gives up on a silent server after timeoutMs", async () => {
    const [clientEnd] = pair();
    const started = Date.now();
    const err = await rejection(NbdClient.handshake(clientEnd, { timeoutMs: 100 }));
    expect(err).toBeInstanceOf(NbdDisconnectedError);
    expect(err.message).toMatch(/timed out after 100 ms/);
    expect(Date.now() - started).toBeLessThan(5000);
  });
});

describe("transmission", () => {
  it("pipelines requests and matches replies that come in reverse order", async () => {
    const { client, script } = await session((s) => s.standardHandshake(HAS_FLAGS | ALL_FLAGS));
    const n = 64;
    const reads = Array.from({ length: n }, () => Buffer.alloc(512));
    const pending = reads.map((into, i) =>
      i % 2 === 0 ? client.read(into, i * 512) : client.write(Buffer.alloc(512, i), i * 512),
    );
    const requests: Request[] = [];
    for (let i = 0; i < n; i++) requests.push(await script.request());
    expect(client.inFlight).toBe(n);
    expect(new Set(requests.map((r) => r.cookie.toString("hex"))).size).toBe(n);
    for (const request of requests.reverse()) {
      if (request.type === CMD_READ) {
        const fill = Buffer.alloc(512, request.offset / 512);
        script.chunk(request.cookie, 1, 1, Buffer.concat([u64(request.offset), fill]));
      } else {
        expect(request.payload?.equals(Buffer.alloc(512, request.offset / 512))).toBe(true);
        script.simple(request.cookie);
      }
    }
    await Promise.all(pending);
    reads.forEach((into, i) => {
      if (i % 2 === 0) expect(into.equals(Buffer.alloc(512, i))).toBe(true);
    });
    expect(client.inFlight).toBe(0);
  });

  it("reports a failed request with its command, range and errno, and carries on", async () => {
    const { client, script } = await session((s) => s.standardHandshake(HAS_FLAGS | ALL_FLAGS));
    const write = client.write(Buffer.alloc(1024), 4096);
    const request = await script.request();
    script.chunk(
      request.cookie,
      1,
      32769,
      Buffer.concat([u32(1), u16(9), Buffer.from("read-only")]),
    );
    const err = await rejection(write);
    expect(err).toBeInstanceOf(NbdRequestError);
    expect((err as NbdRequestError).errno).toBe(1);
    expect(err.code).toBe("EPERM");
    expect(err.message).toBe(
      "NBD_CMD_WRITE at offset 4096 length 1024 failed with EPERM: read-only",
    );
    const flush = client.flush();
    const next = await script.request();
    expect(next.type).toBe(CMD_FLUSH);
    script.simple(next.cookie, 999);
    const unknown = await rejection(flush);
    expect((unknown as NbdRequestError).errno).toBe(22);
    expect(unknown.message).toMatch(/error 999 \(taken as EINVAL\)/);
  });

  it("fails every pending request when the server breaks the protocol", async () => {
    const { client, script } = await session((s) => s.standardHandshake(HAS_FLAGS | ALL_FLAGS));
    const closed = new Promise<Error | undefined>((resolve) => client.once("close", resolve));
    const first = client.flush();
    const second = client.read(Buffer.alloc(512), 0);
    await script.request();
    await script.request();
    script.simple(Buffer.from("ffffffffffffffff", "hex"));
    const errors = await Promise.all([rejection(first), rejection(second)]);
    for (const err of errors) {
      expect(err).toBeInstanceOf(NbdProtocolError);
      expect(err.message).toMatch(/unknown cookie 0xffffffffffffffff/);
    }
    expect(await closed).toBe(errors[0]);
    const late = await rejection(client.flush());
    expect(late.code).toBe("NBD_DISCONNECTED");
  });

  it("fails pending requests with NBD_DISCONNECTED when the server hangs up", async () => {
    const { client, script } = await session((s) => s.standardHandshake(HAS_FLAGS | ALL_FLAGS));
    const pending = client.write(Buffer.alloc(512), 0);
    await script.request();
    script.stream.end();
    const err = await rejection(pending);
    expect(err.code).toBe("NBD_DISCONNECTED");
    expect(await client.closed).toBeInstanceOf(NbdDisconnectedError);
  });

  it("splits requests at the maximum payload and checks alignment locally", async () => {
    const { client, script } = await session((s) =>
      s.standardHandshake(HAS_FLAGS | ALL_FLAGS, { blockSizes: [512, 4096, 65536] }),
    );
    const data = Buffer.alloc(200 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = i % 251;
    const misaligned = await rejection(client.write(Buffer.alloc(512), 100));
    expect(misaligned.code).toBe("EINVAL");
    const write = client.write(data, 8192);
    const lengths: number[] = [];
    const received = Buffer.alloc(data.length);
    for (let done = 0; done < data.length;) {
      const request = await script.request();
      expect(request.type).toBe(CMD_WRITE);
      lengths.push(request.length);
      request.payload?.copy(received, request.offset - 8192);
      done += request.length;
      script.simple(request.cookie);
    }
    await write;
    expect(lengths).toEqual([65536, 65536, 65536, 8192]);
    expect(received.equals(data)).toBe(true);
  });

  it("emulates FUA with FLUSH and WRITE_ZEROES with writes; refuses what cannot be emulated", async () => {
    const { client, script } = await session((s) =>
      s.standardHandshake(HAS_FLAGS | SEND_FLUSH, { size: 4 << 20 }),
    );
    expect((await rejection(client.trim(0, 512))).code).toBe("ENOTSUP");
    expect((await rejection(client.zero(0, 512, FAST_ZERO))).code).toBe("ENOTSUP");
    expect((await rejection(client.cache(0, 512))).code).toBe("ENOTSUP");
    const write = client.write(Buffer.alloc(512, 1), 0, FUA);
    const w = await script.request();
    expect([w.type, w.flags]).toEqual([CMD_WRITE, 0]);
    script.simple(w.cookie);
    const f = await script.request();
    expect(f.type).toBe(CMD_FLUSH);
    script.simple(f.cookie);
    await write;
    const zero = client.zero(1 << 20, 2.5 * (1 << 20));
    const writes: Request[] = [];
    for (let i = 0; i < 3; i++) writes.push(await script.request());
    expect(writes.map((r) => [r.type, r.offset, r.length])).toEqual([
      [CMD_WRITE, 1 << 20, 1 << 20],
      [CMD_WRITE, 2 << 20, 1 << 20],
      [CMD_WRITE, 3 << 20, 1 << 19],
    ]);
    for (const r of writes) {
      expect(r.payload?.every((b) => b === 0)).toBe(true);
      script.simple(r.cookie);
    }
    await zero;
    expect(script.pending).toBe(0);
  });

  it("stops sending into a full socket and resumes on drain", async () => {
    const { client, script } = await session((s) => s.standardHandshake(HAS_FLAGS | ALL_FLAGS), {
      sendBufferBytes: 64 * 1024,
    });
    const clientEnd = script.stream.peer;
    clientEnd.held = [];
    const writes = Array.from({ length: 16 }, (_, i) =>
      client.write(Buffer.alloc(32 * 1024, i), i * 32 * 1024),
    );
    await new Promise((resolve) => setImmediate(resolve));
    expect(clientEnd.writableLength).toBeLessThanOrEqual(64 * 1024 + 32 * 1024 + 2 * 28);
    expect(clientEnd.writableLength).toBeGreaterThan(0);
    const held = clientEnd.held;
    clientEnd.held = undefined;
    for (const done of held) done();
    for (let i = 0; i < 16; i++) {
      const request = await script.request();
      const expected = Buffer.alloc(32 * 1024, request.offset / (32 * 1024));
      expect(request.payload?.equals(expected)).toBe(true);
      script.simple(request.cookie);
    }
    await Promise.all(writes);
  });

  it("close() waits for replies, then sends NBD_CMD_DISC last", async () => {
    const { client, script } = await session((s) => s.standardHandshake(HAS_FLAGS | ALL_FLAGS));
    const closeEvent = new Promise((resolve) => client.once("close", resolve));
    const write = client.write(Buffer.alloc(512), 0);
    const request = await script.request();
    const closing = client.close();
    expect((await rejection(client.flush())).code).toBe("NBD_DISCONNECTED");
    await new Promise((resolve) => setImmediate(resolve));
    expect(script.pending).toBe(0);
    script.simple(request.cookie);
    await write;
    const disc = await script.request();
    expect(disc.type).toBe(CMD_DISC);
    expect(await script.closedByClient()).toBe(true);
    script.stream.end();
    await closing;
    expect(await closeEvent).toBeUndefined();
  });

  it("disconnects softly after NBD_ESHUTDOWN", async () => {
    const { client, script } = await session((s) => s.standardHandshake(HAS_FLAGS | ALL_FLAGS));
    const flush = client.flush();
    const request = await script.request();
    script.simple(request.cookie, 108);
    expect((await rejection(flush)).code).toBe("ESHUTDOWN");
    expect((await script.request()).type).toBe(CMD_DISC);
    script.stream.end();
    expect((await client.closed)?.message).toMatch(/shutting down/);
  });
});
