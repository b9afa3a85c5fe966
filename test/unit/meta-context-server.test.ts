// Metadata contexts beyond base:allocation on the server ("Metadata querying",
// NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT, NBD_CMD_BLOCK_STATUS):
// the test plays the client with hand-built bytes and checks the replies byte
// for byte.
import { Duplex } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import type { Extent, MetaContextSource } from "../../nbd/export.js";
import { NbdServer } from "../../nbd/server/server.js";
import { Filter } from "../../src/backend/filter.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import type { Capabilities } from "../../src/backend/types.js";
import {
  blockStatusChunk,
  cat,
  chunkHeader,
  clientFlags,
  goData,
  greeting,
  metaContextData,
  metaContextReply,
  optionReply,
  optionReplyHeader,
  optionRequest,
  request,
  structuredChunk,
  u32,
  type RequestFields,
} from "../helpers/nbd-fixtures.js";

// Spelled out rather than imported from nbd/constants (see nbd-fixtures.ts).
const OPT_GO = 7;
const OPT_STRUCTURED_REPLY = 8;
const OPT_LIST_META_CONTEXT = 9;
const OPT_SET_META_CONTEXT = 10;
const REP_ACK = 1;
const REP_META_CONTEXT = 4;
const REP_ERR_INVALID = 0x80000003;
const CMD_BLOCK_STATUS = 7;
const CMD_FLAG_REQ_ONE = 1 << 3;
const REPLY_TYPE_BLOCK_STATUS = 5;
const REPLY_TYPE_ERROR = 0x8001;
const HOLE_ZERO = 3;

const KiB = 1024;
const SIZE = 1024 * KiB;

/** Flag 1 on the first 64 KiB of every 256 KiB, as runs clipped to the range. */
function pattern(name: string, size: number): MetaContextSource & { calls: number } {
  return {
    name,
    calls: 0,
    blockStatus(offset: number, length: number): Promise<Extent[]> {
      this.calls++;
      const out: Extent[] = [];
      const end = Math.min(offset + length, size);
      for (let at = offset; at < end;) {
        const within = at % (256 * KiB);
        const dirty = within < 64 * KiB;
        const stop = Math.min(end, at - within + (dirty ? 64 * KiB : 256 * KiB));
        out.push({ length: stop - at, flags: dirty ? 1 : 0 });
        at = stop;
      }
      return Promise.resolve(out);
    },
  };
}

/** A volume that cannot report base:allocation. */
class NoAllocation extends Filter {
  override get capabilities(): Capabilities {
    return { ...this.next.capabilities, blockStatus: false };
  }
}

const failing: MetaContextSource = {
  name: "peercopy:broken",
  blockStatus: () => Promise.reject(new Error("bitmap unavailable")),
};

/** The client's end: bytes pushed in, the server's writes collected. */
class Wire extends Duplex {
  private out = Buffer.alloc(0);
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.out = Buffer.concat([this.out, chunk]);
    cb();
  }
  send(...parts: Buffer[]): void {
    this.push(cat(...parts));
  }
  get unread(): number {
    return this.out.length;
  }
  async receive(n: number): Promise<Buffer> {
    const deadline = Date.now() + 3000;
    while (this.out.length < n) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${n} bytes`);
      await new Promise((r) => setTimeout(r, 5));
    }
    const b = this.out.subarray(0, n);
    this.out = this.out.subarray(n);
    return b;
  }
}

const settle = async (): Promise<void> => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

const wires: Wire[] = [];
afterEach(() => {
  for (const w of wires.splice(0)) w.destroy();
});

let nextCookie = 1n;
const rq = (offset: number, length: number, flags = 0): RequestFields => ({
  type: CMD_BLOCK_STATUS,
  offset,
  length,
  flags,
  cookie: nextCookie++,
});

const test = pattern("peercopy:test", SIZE);
const other = pattern("peercopy:other", SIZE);

async function open(
  metaContexts: readonly MetaContextSource[] = [test, other],
  blockStatus = true,
): Promise<Wire> {
  const volume = new MemoryBackend(SIZE);
  if (blockStatus) await volume.write(Buffer.alloc(64 * KiB, 1), 0, 0);
  const served = blockStatus ? volume : new NoAllocation(volume);
  const server = new NbdServer({
    exports: [{ name: "disk", description: "", volume: served, metaContexts }],
  });
  const wire = new Wire();
  wires.push(wire);
  server.accept(wire, "test");
  expect(await wire.receive(18)).toEqual(greeting());
  wire.send(clientFlags(3), optionRequest(OPT_STRUCTURED_REPLY));
  expect(await wire.receive(20)).toEqual(optionReply(OPT_STRUCTURED_REPLY, REP_ACK));
  return wire;
}

/** Send a meta context option; return every reply up to and including the final one. */
async function metaOption(wire: Wire, option: number, queries: readonly string[]) {
  wire.send(optionRequest(option, metaContextData("disk", queries)));
  const replies: Buffer[] = [];
  for (;;) {
    const head = await wire.receive(20);
    const reply = cat(head, await wire.receive(optionReplyHeader(head).length));
    replies.push(reply);
    if (optionReplyHeader(head).type !== REP_META_CONTEXT) return replies;
  }
}

async function go(wire: Wire): Promise<void> {
  wire.send(optionRequest(OPT_GO, goData("disk", [])));
  await wire.receive(20 + 12); // NBD_INFO_EXPORT
  expect(await wire.receive(20)).toEqual(optionReply(OPT_GO, REP_ACK));
}

const ack = (option: number) => optionReply(option, REP_ACK);
const listed = (name: string) => metaContextReply(OPT_LIST_META_CONTEXT, 0, name);
const selected = (id: number, name: string) => metaContextReply(OPT_SET_META_CONTEXT, id, name);
const statusChunk = (done: boolean, cookie: bigint, id: number, extents: number[][]) =>
  structuredChunk(
    done ? 1 : 0,
    REPLY_TYPE_BLOCK_STATUS,
    cookie,
    cat(u32(id), ...extents.map(([length, flags]) => cat(u32(length ?? 0), u32(flags ?? 0)))),
  );

describe("NBD_OPT_LIST_META_CONTEXT", () => {
  it("lists every context with no query, ids zero", async () => {
    const wire = await open();
    expect(await metaOption(wire, OPT_LIST_META_CONTEXT, [])).toEqual([
      listed("base:allocation"),
      listed("peercopy:test"),
      listed("peercopy:other"),
      ack(OPT_LIST_META_CONTEXT),
    ]);
  });

  it("a namespace-only query lists that namespace", async () => {
    const wire = await open();
    expect(await metaOption(wire, OPT_LIST_META_CONTEXT, ["peercopy:"])).toEqual([
      listed("peercopy:test"),
      listed("peercopy:other"),
      ack(OPT_LIST_META_CONTEXT),
    ]);
    expect(await metaOption(wire, OPT_LIST_META_CONTEXT, ["base:"])).toEqual([
      listed("base:allocation"),
      ack(OPT_LIST_META_CONTEXT),
    ]);
  });

  it("exact names list those contexts; unknown names and namespaces are ignored", async () => {
    const wire = await open();
    const queries = ["peercopy:other", "peercopy:nope", "qemu:", "x-unknown:thing"];
    expect(await metaOption(wire, OPT_LIST_META_CONTEXT, queries)).toEqual([
      listed("peercopy:other"),
      ack(OPT_LIST_META_CONTEXT),
    ]);
  });

  it("a query without a namespace is NBD_REP_ERR_INVALID", async () => {
    const wire = await open();
    const [reply] = await metaOption(wire, OPT_LIST_META_CONTEXT, ["peercopy"]);
    expect(optionReplyHeader(reply as Buffer).type).toBe(REP_ERR_INVALID);
  });
});

describe("NBD_OPT_SET_META_CONTEXT", () => {
  it("selects exactly the named contexts, each with a distinct id", async () => {
    const wire = await open();
    const queries = ["peercopy:other", "base:allocation", "peercopy:", "peercopy:other"];
    expect(await metaOption(wire, OPT_SET_META_CONTEXT, queries)).toEqual([
      selected(1, "base:allocation"),
      selected(3, "peercopy:other"),
      ack(OPT_SET_META_CONTEXT),
    ]);
  });

  it("a namespace-only query selects nothing", async () => {
    const wire = await open();
    expect(await metaOption(wire, OPT_SET_META_CONTEXT, ["peercopy:", "base:"])).toEqual([
      ack(OPT_SET_META_CONTEXT),
    ]);
    await go(wire);
    const r = rq(0, SIZE);
    wire.send(request(r));
    const h = chunkHeader(await wire.receive(20));
    expect(h.type).toBe(REPLY_TYPE_ERROR);
  });
});

describe("NBD_CMD_BLOCK_STATUS with several contexts", () => {
  it("sends one chunk per selected context, only the last with NBD_REPLY_FLAG_DONE", async () => {
    const wire = await open();
    await metaOption(wire, OPT_SET_META_CONTEXT, ["base:allocation", "peercopy:test"]);
    await go(wire);
    const r = rq(0, SIZE);
    wire.send(request(r));
    const allocation = statusChunk(false, r.cookie, 1, [
      [64 * KiB, 0],
      [SIZE - 64 * KiB, HOLE_ZERO],
    ]);
    const marks = statusChunk(true, r.cookie, 2, [
      [64 * KiB, 1],
      [192 * KiB, 0],
      [64 * KiB, 1],
      [192 * KiB, 0],
      [64 * KiB, 1],
      [192 * KiB, 0],
      [64 * KiB, 1],
      [192 * KiB, 0],
    ]);
    expect(await wire.receive(allocation.length + marks.length)).toEqual(cat(allocation, marks));
    await settle();
    expect(wire.unread).toBe(0);
  });

  it("REQ_ONE gives one extent per chunk, clipped to the request", async () => {
    const wire = await open();
    await metaOption(wire, OPT_SET_META_CONTEXT, ["peercopy:test", "base:allocation"]);
    await go(wire);
    const r = rq(32 * KiB, 8 * KiB, CMD_FLAG_REQ_ONE);
    wire.send(request(r));
    const expected = cat(
      statusChunk(false, r.cookie, 1, [[8 * KiB, 0]]),
      statusChunk(true, r.cookie, 2, [[8 * KiB, 1]]),
    );
    expect(await wire.receive(expected.length)).toEqual(expected);
    const r2 = rq(100 * KiB, 200 * KiB, CMD_FLAG_REQ_ONE);
    wire.send(request(r2));
    const expected2 = cat(
      statusChunk(false, r2.cookie, 1, [[200 * KiB, HOLE_ZERO]]),
      statusChunk(true, r2.cookie, 2, [[156 * KiB, 0]]),
    );
    expect(await wire.receive(expected2.length)).toEqual(expected2);
  });

  it("a context alone, without base:allocation, is one chunk with DONE", async () => {
    const wire = await open([test, other], false);
    expect(
      await metaOption(wire, OPT_SET_META_CONTEXT, ["base:allocation", "peercopy:other"]),
    ).toEqual([selected(3, "peercopy:other"), ack(OPT_SET_META_CONTEXT)]);
    await go(wire);
    const r = rq(256 * KiB, 100 * KiB);
    wire.send(request(r));
    const expected = statusChunk(true, r.cookie, 3, [
      [64 * KiB, 1],
      [36 * KiB, 0],
    ]);
    expect(await wire.receive(expected.length)).toEqual(expected);
  });

  it("a later SET replaces the selection", async () => {
    const wire = await open();
    await metaOption(wire, OPT_SET_META_CONTEXT, ["base:allocation", "peercopy:test"]);
    await metaOption(wire, OPT_SET_META_CONTEXT, ["base:allocation"]);
    await go(wire);
    const r = rq(0, 4 * KiB);
    wire.send(request(r));
    const expected = blockStatusChunk(r.cookie, 1, [{ length: 4 * KiB, flags: 0 }]);
    expect(await wire.receive(expected.length)).toEqual(expected);
    await settle();
    expect(wire.unread).toBe(0);
  });

  it("a failing source turns the whole request into one error reply", async () => {
    const wire = await open([test, failing]);
    await metaOption(wire, OPT_SET_META_CONTEXT, ["base:allocation", "peercopy:broken"]);
    await go(wire);
    const r = rq(0, SIZE);
    wire.send(request(r));
    const h = chunkHeader(await wire.receive(20));
    expect(h).toMatchObject({ type: REPLY_TYPE_ERROR, flags: 1, cookie: r.cookie });
    const payload = await wire.receive(h.length);
    expect(payload.toString("utf8", 6)).toMatch(/bitmap unavailable/);
    await settle();
    expect(wire.unread).toBe(0);
  });
});
