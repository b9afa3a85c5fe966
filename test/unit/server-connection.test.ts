// A whole server session over an in-memory duplex: the test plays the client
// with hand-built bytes and checks what the server sends back, byte for byte
// where the spec fixes the bytes.
import { Duplex } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_EXTENDED_HEADERS,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from "../../nbd/constants.js";
import { NbdServer } from "../../nbd/server/server.js";
import { Filter } from "../../src/backend/filter.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import type { Backend } from "../../src/backend/types.js";
import {
  blockStatusChunk,
  chunkHeader,
  clientFlags,
  exportNameReply,
  goData,
  greeting,
  infoBlockSize,
  infoDescription,
  infoExport,
  infoName,
  metaContextData,
  metaContextReply,
  offsetDataChunk,
  optionHeader,
  optionReply,
  optionReplyHeader,
  optionRequest,
  repServer,
  request,
  simpleReply,
  simpleReplyHeader,
  utf8,
  type ChunkFields,
  type OptionReplyFields,
  type RequestFields,
} from "../helpers/nbd-fixtures.js";

const SIZE = 1024 * 1024;
const PAGE = 64 * 1024;
// Transmission flags of a writable MemoryBackend: HAS_FLAGS, SEND_FLUSH,
// SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN, SEND_CACHE, SEND_FAST_ZERO.
const RW_FLAGS = 0x0001 | 0x0004 | 0x0008 | 0x0020 | 0x0040 | 0x0100 | 0x0400 | 0x0800;
const SEND_DF = 0x0080;
// Read-only: HAS_FLAGS, READ_ONLY, SEND_FLUSH, SEND_FUA, CAN_MULTI_CONN, SEND_CACHE.
const RO_FLAGS = 0x0001 | 0x0002 | 0x0004 | 0x0008 | 0x0100 | 0x0400;

/** The client's end of a connection: bytes pushed in, the server's writes collected. */
class Wire extends Duplex {
  ended = false;
  private out = Buffer.alloc(0);
  private waiters: (() => void)[] = [];

  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.out = Buffer.concat([this.out, chunk]);
    this.wake();
    cb();
  }
  override _final(cb: (err?: Error | null) => void): void {
    this.ended = true;
    this.wake();
    cb();
  }

  send(...parts: Buffer[]): void {
    this.push(Buffer.concat(parts));
  }

  /** Bytes the server sent that the test has not taken yet. */
  get unread(): number {
    return this.out.length;
  }

  async receive(n: number): Promise<Buffer> {
    await this.until(() => this.out.length >= n, `${n} bytes (have ${this.out.length})`);
    const b = this.out.subarray(0, n);
    this.out = this.out.subarray(n);
    return b;
  }

  async serverEnded(): Promise<void> {
    await this.until(() => this.ended, "the server to end the connection");
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private async until(ready: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 3000;
    while (!ready()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
  }
}

/** Lets the event loop run until the server has written everything it will. */
const settle = async (): Promise<void> => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

const wires: Wire[] = [];
afterEach(() => {
  for (const w of wires.splice(0)) w.destroy();
});

function serve(volume: Backend = new MemoryBackend(SIZE), name = "disk", description = "") {
  const server = new NbdServer({ exports: [{ name, description, volume }] });
  return { server, volume, connect: () => connect(server) };
}

async function connect(server: NbdServer, flags = 3): Promise<Wire> {
  const wire = new Wire();
  wires.push(wire);
  server.accept(wire, "test");
  expect(await wire.receive(18)).toEqual(greeting());
  wire.send(clientFlags(flags));
  return wire;
}

async function optionReplyOf(wire: Wire): Promise<OptionReplyFields> {
  const h = optionReplyHeader(await wire.receive(20));
  return { option: h.option, type: h.type, data: await wire.receive(h.length) };
}

async function chunkOf(wire: Wire): Promise<ChunkFields & { payload: Buffer }> {
  const h = chunkHeader(await wire.receive(20));
  return { ...h, payload: await wire.receive(h.length) };
}

/** Negotiate up to transmission with NBD_OPT_GO. */
async function go(wire: Wire, name: string, opts: { structured?: boolean; meta?: boolean } = {}) {
  if (opts.structured === true) {
    wire.send(optionRequest(NBD_OPT_STRUCTURED_REPLY));
    expect(await wire.receive(20)).toEqual(optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK));
  }
  if (opts.meta === true) {
    wire.send(optionRequest(NBD_OPT_SET_META_CONTEXT, metaContextData(name, ["base:allocation"])));
    const ctx = await optionReplyOf(wire);
    expect(ctx.type).toBe(NBD_REP_META_CONTEXT);
    expect(await wire.receive(20)).toEqual(optionReply(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK));
  }
  wire.send(optionRequest(NBD_OPT_GO, goData(name, [])));
  const info = await optionReplyOf(wire);
  expect(info.type).toBe(NBD_REP_INFO);
  expect(await wire.receive(20)).toEqual(optionReply(NBD_OPT_GO, NBD_REP_ACK));
}

/** Send one request; return the simple reply's error and, for a successful READ, its data. */
async function simple(wire: Wire, f: RequestFields, payload?: Buffer) {
  wire.send(request(f, payload));
  const h = simpleReplyHeader(await wire.receive(16));
  expect(h.cookie).toBe(f.cookie);
  const data = f.type === NBD_CMD_READ && h.error === 0 ? await wire.receive(f.length) : null;
  return { error: h.error, data };
}

const pattern = (n: number, seed: number): Buffer =>
  Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));

describe("negotiation", () => {
  it("NBD_OPT_LIST: one NBD_REP_SERVER per export, then ACK", async () => {
    const server = new NbdServer({
      exports: [
        { name: "a", description: "first", volume: new MemoryBackend(PAGE) },
        { name: "b", description: "", volume: new MemoryBackend(PAGE) },
      ],
    });
    const wire = await connect(server);
    wire.send(optionRequest(NBD_OPT_LIST));
    expect(await wire.receive(repServer(3, "a", "first").length)).toEqual(
      repServer(3, "a", "first"),
    );
    expect(await wire.receive(repServer(3, "b", "").length)).toEqual(repServer(3, "b", ""));
    expect(await wire.receive(20)).toEqual(optionReply(NBD_OPT_LIST, NBD_REP_ACK));
    wire.send(optionRequest(NBD_OPT_LIST, Buffer.from("x")));
    expect((await optionReplyOf(wire)).type).toBe(NBD_REP_ERR_INVALID);
  });

  it("NBD_OPT_INFO answers the info requests and negotiation goes on to GO", async () => {
    const { connect: open } = serve(new MemoryBackend(SIZE), "disk", "a disk");
    const wire = await open();
    wire.send(
      optionRequest(
        NBD_OPT_INFO,
        goData("disk", [NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE]),
      ),
    );
    const expected = Buffer.concat([
      infoExport(NBD_OPT_INFO, SIZE, RW_FLAGS),
      infoName(NBD_OPT_INFO, "disk"),
      infoDescription(NBD_OPT_INFO, "a disk"),
      infoBlockSize(NBD_OPT_INFO, 1, 4096, 32 * 1024 * 1024),
      optionReply(NBD_OPT_INFO, NBD_REP_ACK),
    ]);
    expect(await wire.receive(expected.length)).toEqual(expected);
    wire.send(optionRequest(NBD_OPT_GO, goData("disk", [])));
    const goReply = Buffer.concat([
      infoExport(NBD_OPT_GO, SIZE, RW_FLAGS),
      optionReply(NBD_OPT_GO, NBD_REP_ACK),
    ]);
    expect(await wire.receive(goReply.length)).toEqual(goReply);
    expect(
      (await simple(wire, { type: NBD_CMD_FLUSH, cookie: 1n, offset: 0, length: 0 })).error,
    ).toBe(0);
  });

  it("unknown options and NBD_OPT_EXTENDED_HEADERS get ERR_UNSUP; negotiation continues", async () => {
    const wire = await serve().connect();
    for (const option of [99, NBD_OPT_EXTENDED_HEADERS, 0x7fff_ffff]) {
      wire.send(optionRequest(option, Buffer.from("payload")));
      const r = await optionReplyOf(wire);
      expect(r.option).toBe(option);
      expect(r.type).toBe(NBD_REP_ERR_UNSUP);
    }
    await go(wire, "disk");
  });

  it("an option over the size limit gets ERR_TOO_BIG; negotiation continues", async () => {
    const wire = await serve().connect();
    wire.send(optionHeader(NBD_OPT_LIST, 100_000), Buffer.alloc(100_000));
    const r = await optionReplyOf(wire);
    expect([r.option, r.type]).toEqual([NBD_OPT_LIST, NBD_REP_ERR_TOO_BIG]);
    await go(wire, "disk");
  });

  it("meta contexts need STRUCTURED_REPLY first; then base:allocation gets an id", async () => {
    const wire = await serve().connect();
    const data = metaContextData("disk", ["base:allocation"]);
    wire.send(optionRequest(NBD_OPT_SET_META_CONTEXT, data));
    expect((await optionReplyOf(wire)).type).toBe(NBD_REP_ERR_INVALID);
    wire.send(optionRequest(NBD_OPT_STRUCTURED_REPLY));
    expect(await wire.receive(20)).toEqual(optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK));
    wire.send(optionRequest(NBD_OPT_LIST_META_CONTEXT, metaContextData("disk", [])));
    const listed = await optionReplyOf(wire);
    expect(listed.type).toBe(NBD_REP_META_CONTEXT);
    expect(listed.data.subarray(4).toString()).toBe("base:allocation");
    expect(await wire.receive(20)).toEqual(optionReply(NBD_OPT_LIST_META_CONTEXT, NBD_REP_ACK));
    wire.send(optionRequest(NBD_OPT_SET_META_CONTEXT, data));
    const set = await optionReplyOf(wire);
    const id = set.data.readUInt32BE(0);
    expect(id).not.toBe(0);
    expect(Buffer.concat([optionReplyHeaderBytes(set), set.data])).toEqual(
      metaContextReply(NBD_OPT_SET_META_CONTEXT, id, "base:allocation"),
    );
    expect(await wire.receive(20)).toEqual(optionReply(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK));
    wire.send(optionRequest(NBD_OPT_SET_META_CONTEXT, metaContextData("disk", ["nonamespace"])));
    expect((await optionReplyOf(wire)).type).toBe(NBD_REP_ERR_INVALID);
    wire.send(
      optionRequest(NBD_OPT_SET_META_CONTEXT, metaContextData("nope", ["base:allocation"])),
    );
    expect((await optionReplyOf(wire)).type).toBe(NBD_REP_ERR_UNKNOWN);
  });

  it("GO to an unknown export gets ERR_UNKNOWN; a malformed GO gets ERR_INVALID", async () => {
    const wire = await serve().connect();
    wire.send(optionRequest(NBD_OPT_GO, goData("nope", [])));
    const r = await optionReplyOf(wire);
    expect([r.option, r.type]).toEqual([NBD_OPT_GO, NBD_REP_ERR_UNKNOWN]);
    wire.send(optionRequest(NBD_OPT_GO, Buffer.from([0, 0, 0, 9])));
    expect((await optionReplyOf(wire)).type).toBe(NBD_REP_ERR_INVALID);
    await go(wire, "disk", { structured: true });
  });

  it("GO after STRUCTURED_REPLY advertises NBD_FLAG_SEND_DF; read-only exports READ_ONLY", async () => {
    const wire = await serve().connect();
    wire.send(
      optionRequest(NBD_OPT_STRUCTURED_REPLY),
      optionRequest(NBD_OPT_GO, goData("disk", [])),
    );
    const expected = Buffer.concat([
      optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK),
      infoExport(NBD_OPT_GO, SIZE, RW_FLAGS | SEND_DF),
      optionReply(NBD_OPT_GO, NBD_REP_ACK),
    ]);
    expect(await wire.receive(expected.length)).toEqual(expected);
    const ro = await serve(new MemoryBackend(SIZE, true)).connect();
    ro.send(optionRequest(NBD_OPT_GO, goData("disk", [])));
    expect(await ro.receive(32)).toEqual(infoExport(NBD_OPT_GO, SIZE, RO_FLAGS));
  });

  it("NBD_OPT_EXPORT_NAME: 124 zero bytes unless the client set NO_ZEROES", async () => {
    const { server } = serve();
    const plain = await connect(server, 1);
    plain.send(optionRequest(NBD_OPT_EXPORT_NAME, utf8("disk")));
    expect(await plain.receive(134)).toEqual(exportNameReply(SIZE, RW_FLAGS, true));
    const noZeroes = await connect(server, 3);
    noZeroes.send(optionRequest(NBD_OPT_EXPORT_NAME, utf8("disk")));
    expect(await noZeroes.receive(10)).toEqual(exportNameReply(SIZE, RW_FLAGS, false));
    const r = await simple(noZeroes, { type: NBD_CMD_READ, cookie: 5n, offset: 0, length: 8 });
    expect(r).toEqual({ error: 0, data: Buffer.alloc(8) });
  });

  it("NBD_OPT_EXPORT_NAME for an unknown export, ABORT and unknown client flags end the session", async () => {
    const { server } = serve();
    const unknown = await connect(server);
    unknown.send(optionRequest(NBD_OPT_EXPORT_NAME, utf8("nope")));
    await unknown.serverEnded();
    expect(unknown.unread).toBe(0);
    const abort = await connect(server);
    abort.send(optionRequest(NBD_OPT_ABORT));
    expect(await abort.receive(20)).toEqual(optionReply(NBD_OPT_ABORT, NBD_REP_ACK));
    await abort.serverEnded();
    const badFlags = await connect(server, 0x10);
    await badFlags.serverEnded();
  });
});

function optionReplyHeaderBytes(r: OptionReplyFields): Buffer {
  return optionReply(r.option, r.type, r.data).subarray(0, 20);
}

let nextCookie = 100n;
/** Request fields with a cookie of their own. */
const rq = (type: number, offset: number | bigint, length: number, flags = 0): RequestFields => ({
  type,
  offset,
  length,
  flags,
  cookie: nextCookie++,
});

const errorOf = async (wire: Wire, f: RequestFields, payload?: Buffer): Promise<number> =>
  (await simple(wire, f, payload)).error;

async function readBack(wire: Wire, offset: number, length: number): Promise<Buffer> {
  const r = await simple(wire, rq(NBD_CMD_READ, offset, length));
  expect(r.error).toBe(0);
  return r.data as Buffer;
}

describe("transmission, simple replies", () => {
  it("WRITE, READ, FLUSH, TRIM, WRITE_ZEROES and CACHE against a MemoryBackend", async () => {
    const wire = await serve().connect();
    await go(wire, "disk");
    const data = pattern(3 * PAGE, 1);
    const at = PAGE / 2;
    expect(await errorOf(wire, rq(NBD_CMD_WRITE, at, data.length), data)).toBe(0);
    // Buffer.equals: a deep toEqual over 192 KiB takes seconds.
    expect((await readBack(wire, at, data.length)).equals(data)).toBe(true);
    const fua = pattern(10, 9);
    const steps: [RequestFields, Buffer?][] = [
      [rq(NBD_CMD_FLUSH, 0, 0)],
      [rq(NBD_CMD_WRITE, 0, 10, NBD_CMD_FLAG_FUA), fua],
      [rq(NBD_CMD_TRIM, PAGE, PAGE)],
      [rq(NBD_CMD_WRITE_ZEROES, at, 100, NBD_CMD_FLAG_NO_HOLE)],
      [rq(NBD_CMD_WRITE_ZEROES, 2 * PAGE, 50, NBD_CMD_FLAG_FAST_ZERO)],
      [rq(NBD_CMD_CACHE, 0, SIZE)],
    ];
    for (const [f, payload] of steps)
      expect(await errorOf(wire, f, payload), `command ${f.type}`).toBe(0);
    const expected = Buffer.alloc(4 * PAGE);
    data.copy(expected, at);
    fua.copy(expected, 0);
    expected.fill(0, PAGE, 2 * PAGE);
    expected.fill(0, at, at + 100);
    expected.fill(0, 2 * PAGE, 2 * PAGE + 50);
    expect((await readBack(wire, 0, 4 * PAGE)).equals(expected)).toBe(true);
  });

  it("pipelined requests sent in one chunk each get their own reply", async () => {
    const wire = await serve().connect();
    await go(wire, "disk");
    const sent = new Map<bigint, number>();
    const parts: Buffer[] = [];
    for (let i = 0; i < 20; i++) {
      const cookie = BigInt(i) * 0x1_0000_0001n;
      const offset = i * 1000;
      if (i % 2 === 0) {
        parts.push(request({ type: NBD_CMD_WRITE, cookie, offset, length: 500 }, pattern(500, i)));
        sent.set(cookie, 0);
      } else {
        parts.push(request({ type: NBD_CMD_READ, cookie, offset: offset - 1000, length: 500 }));
        sent.set(cookie, 500);
      }
    }
    wire.send(...parts);
    for (let n = 0; n < 20; n++) {
      const h = simpleReplyHeader(await wire.receive(16));
      expect(h.error).toBe(0);
      const length = sent.get(h.cookie);
      expect(length).toBeDefined();
      sent.delete(h.cookie);
      if (length !== 0) await wire.receive(length as number);
    }
    expect(sent.size).toBe(0);
  });

  it("a bad flag or command gets EINVAL and the connection goes on", async () => {
    const wire = await serve().connect();
    await go(wire, "disk");
    const cases: [string, RequestFields, Buffer?][] = [
      ["READ with NO_HOLE", rq(NBD_CMD_READ, 0, 1, NBD_CMD_FLAG_NO_HOLE)],
      ["READ with DF before STRUCTURED_REPLY", rq(NBD_CMD_READ, 0, 1, NBD_CMD_FLAG_DF)],
      ["WRITE with REQ_ONE", rq(NBD_CMD_WRITE, 0, 4, NBD_CMD_FLAG_REQ_ONE), utf8("abcd")],
      ["unknown command 42", rq(42, 0, 1)],
    ];
    for (const [what, f, payload] of cases)
      expect(await errorOf(wire, f, payload), what).toBe(NBD_EINVAL);
    expect(await readBack(wire, 0, 4)).toEqual(Buffer.alloc(4));
  });

  it("a read-only export refuses writes with EPERM and drains the WRITE payload", async () => {
    const readOnly = new MemoryBackend(SIZE, true);
    await readOnly.write(utf8("keep"), 0, 0);
    const wire = await serve(readOnly).connect();
    await go(wire, "disk");
    // The payload looks like a request: a server that did not drain it would parse it.
    const decoy = request(rq(NBD_CMD_FLUSH, 0, 0));
    expect(await errorOf(wire, rq(NBD_CMD_WRITE, 0, decoy.length), decoy)).toBe(NBD_EPERM);
    expect(await errorOf(wire, rq(NBD_CMD_TRIM, 0, 4))).toBe(NBD_EPERM);
    expect(await errorOf(wire, rq(NBD_CMD_WRITE_ZEROES, 0, 4))).toBe(NBD_EPERM);
    expect(await readBack(wire, 0, 4)).toEqual(utf8("keep"));
    await settle();
    expect(wire.unread).toBe(0);
  });

  it("out of range: EINVAL for READ and TRIM, ENOSPC for WRITE and WRITE_ZEROES", async () => {
    const wire = await serve().connect();
    await go(wire, "disk");
    expect(await errorOf(wire, rq(NBD_CMD_READ, SIZE - 512, 1024))).toBe(NBD_EINVAL);
    expect(await errorOf(wire, rq(NBD_CMD_READ, 2n ** 63n, 1))).toBe(NBD_EINVAL);
    expect(await errorOf(wire, rq(NBD_CMD_TRIM, SIZE, 1))).toBe(NBD_EINVAL);
    expect(await errorOf(wire, rq(NBD_CMD_WRITE, SIZE - 1, 2), utf8("xy"))).toBe(NBD_ENOSPC);
    expect(await errorOf(wire, rq(NBD_CMD_WRITE_ZEROES, SIZE, 1))).toBe(NBD_ENOSPC);
    expect(await readBack(wire, SIZE - 2, 2)).toEqual(Buffer.alloc(2));
  });
});

describe("transmission, structured replies", () => {
  it("READ is one OFFSET_DATA chunk; errors are ERROR chunks", async () => {
    const wire = await serve().connect();
    await go(wire, "disk", { structured: true });
    const data = pattern(1000, 3);
    const write = rq(NBD_CMD_WRITE, 5000, 1000);
    wire.send(request(write, data));
    expect(await wire.receive(16)).toEqual(simpleReply(0, write.cookie));
    const read = rq(NBD_CMD_READ, 5000, 1000, NBD_CMD_FLAG_DF);
    wire.send(request(read));
    const expected = offsetDataChunk(read.cookie, 5000, data);
    expect(await wire.receive(expected.length)).toEqual(expected);
    const bad = { ...rq(NBD_CMD_READ, SIZE, 1), cookie: 0xffff_ffff_0000_0001n };
    wire.send(request(bad));
    const err = await chunkOf(wire);
    expect([err.flags, err.type, err.cookie]).toEqual([1, 0x8001, bad.cookie]);
    expect(err.payload.readUInt32BE(0)).toBe(NBD_EINVAL);
    expect(err.payload.readUInt16BE(4)).toBe(err.length - 6);
  });

  it("BLOCK_STATUS without a negotiated meta context gets EINVAL", async () => {
    const wire = await serve().connect();
    await go(wire, "disk", { structured: true });
    wire.send(request(rq(NBD_CMD_BLOCK_STATUS, 0, SIZE)));
    const err = await chunkOf(wire);
    expect(err.type).toBe(0x8001);
    expect(err.payload.readUInt32BE(0)).toBe(NBD_EINVAL);
  });

  it("BLOCK_STATUS reports base:allocation extents; REQ_ONE clips to one", async () => {
    const { volume, connect: open } = serve();
    await volume.write(Buffer.alloc(PAGE, 1), 0, 0);
    const wire = await open();
    await go(wire, "disk", { structured: true, meta: true });
    const hole = NBD_STATE_HOLE | NBD_STATE_ZERO;
    const whole = rq(NBD_CMD_BLOCK_STATUS, 0, SIZE);
    wire.send(request(whole));
    const all = blockStatusChunk(whole.cookie, 1, [
      { length: PAGE, flags: 0 },
      { length: SIZE - PAGE, flags: hole },
    ]);
    expect(await wire.receive(all.length)).toEqual(all);
    const first = rq(NBD_CMD_BLOCK_STATUS, 100, 1000, NBD_CMD_FLAG_REQ_ONE);
    wire.send(request(first));
    const one = blockStatusChunk(first.cookie, 1, [{ length: 1000, flags: 0 }]);
    expect(await wire.receive(one.length)).toEqual(one);
  });

  it("a meta context set for another export does not enable BLOCK_STATUS", async () => {
    const server = new NbdServer({
      exports: [
        { name: "a", description: "", volume: new MemoryBackend(PAGE) },
        { name: "b", description: "", volume: new MemoryBackend(PAGE) },
      ],
    });
    const wire = await connect(server);
    wire.send(optionRequest(NBD_OPT_STRUCTURED_REPLY));
    await wire.receive(20);
    wire.send(optionRequest(NBD_OPT_SET_META_CONTEXT, metaContextData("a", ["base:allocation"])));
    expect((await optionReplyOf(wire)).type).toBe(NBD_REP_META_CONTEXT);
    await wire.receive(20);
    await go(wire, "b");
    wire.send(request(rq(NBD_CMD_BLOCK_STATUS, 0, PAGE)));
    expect((await chunkOf(wire)).payload.readUInt32BE(0)).toBe(NBD_EINVAL);
  });
});

/** A MemoryBackend whose writes wait until the test releases them. */
class GatedBackend extends Filter {
  private release: (() => void) | undefined;
  private readonly gate = new Promise<void>((r) => (this.release = r));
  writes = 0;

  open(): void {
    this.release?.();
  }
  override async write(data: Buffer, offset: number, flags: number): Promise<void> {
    this.writes++;
    await this.gate;
    return super.write(data, offset, flags);
  }
}

describe("ending a connection", () => {
  it("NBD_CMD_DISC closes after the replies in flight, and nothing after it is parsed", async () => {
    const volume = new GatedBackend(new MemoryBackend(SIZE));
    const wire = await serve(volume).connect();
    await go(wire, "disk");
    wire.send(
      request({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 4 }, utf8("abcd")),
      request({ type: NBD_CMD_DISC, cookie: 2n, offset: 0, length: 0 }),
      request({ type: NBD_CMD_READ, cookie: 3n, offset: 0, length: 4 }),
    );
    await settle();
    expect(volume.writes).toBe(1);
    expect(wire.unread).toBe(0);
    expect(wire.ended).toBe(false);
    volume.open();
    expect(await wire.receive(16)).toEqual(simpleReply(0, 1n));
    await wire.serverEnded();
    await settle();
    expect(wire.unread).toBe(0);
  });

  it("a bad request magic closes only that connection", async () => {
    const { server } = serve();
    const bad = await connect(server);
    const good = await connect(server);
    await go(bad, "disk");
    await go(good, "disk");
    expect(server.connectionCount).toBe(2);
    const garbage = request({ type: NBD_CMD_READ, cookie: 1n, offset: 0, length: 1 });
    garbage.writeUInt32BE(0xdeadbeef, 0);
    bad.send(garbage);
    await bad.serverEnded();
    expect(bad.unread).toBe(0);
    bad.push(null);
    await settle();
    expect(server.connectionCount).toBe(1);
    expect(await simple(good, { type: NBD_CMD_READ, cookie: 2n, offset: 0, length: 2 })).toEqual({
      error: 0,
      data: Buffer.alloc(2),
    });
  });
});
