// The transmission-phase reply parser. Replies are built here by hand, fed
// whole, split at every offset and one byte at a time, and must parse the same.
import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import {
  ReplyParser,
  type ReplyHandler,
  type ReplyParserOptions,
  type ReplyTarget,
} from "../../nbd/codec/client-replies.js";
import { NbdProtocolError } from "../../nbd/errors.js";

const READ = 0;
const WRITE = 1;
const FLUSH = 3;
const BLOCK_STATUS = 7;
const REQ_ONE = 1 << 3;
const DONE = 1;
const T_NONE = 0;
const T_DATA = 1;
const T_HOLE = 2;
const T_BLOCK_STATUS = 5;
const T_ERROR = 32769;
const T_ERROR_OFFSET = 32770;

function simple(cookie: number, error: number, data?: Buffer): Buffer {
  const head = Buffer.alloc(16);
  head.writeUInt32BE(0x67446698, 0);
  head.writeUInt32BE(error, 4);
  head.writeUInt32BE(Math.floor(cookie / 2 ** 32), 8);
  head.writeUInt32BE(cookie % 2 ** 32, 12);
  return data === undefined ? head : Buffer.concat([head, data]);
}

function chunk(cookie: number, flags: number, type: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(20);
  head.writeUInt32BE(0x668e33ef, 0);
  head.writeUInt16BE(flags, 4);
  head.writeUInt16BE(type, 6);
  head.writeUInt32BE(Math.floor(cookie / 2 ** 32), 8);
  head.writeUInt32BE(cookie % 2 ** 32, 12);
  head.writeUInt32BE(payload.length, 16);
  return Buffer.concat([head, payload]);
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}
function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

const data = (cookie: number, flags: number, offset: number, bytes: Buffer): Buffer =>
  chunk(cookie, flags, T_DATA, Buffer.concat([u64(offset), bytes]));
const hole = (cookie: number, flags: number, offset: number, size: number): Buffer =>
  chunk(cookie, flags, T_HOLE, Buffer.concat([u64(offset), u32(size)]));
const none = (cookie: number): Buffer => chunk(cookie, DONE, T_NONE, Buffer.alloc(0));
const error = (cookie: number, flags: number, errno: number, message: string): Buffer =>
  chunk(
    cookie,
    flags,
    T_ERROR,
    Buffer.concat([u32(errno), u16(Buffer.byteLength(message)), Buffer.from(message)]),
  );
const blockStatus = (cookie: number, flags: number, id: number, extents: number[][]): Buffer =>
  chunk(
    cookie,
    flags,
    T_BLOCK_STATUS,
    Buffer.concat([u32(id), ...extents.flatMap(([len, fl]) => [u32(len ?? 0), u32(fl ?? 0)])]),
  );

function target(command: number, offset: number, length: number, flags = 0): ReplyTarget {
  return {
    command,
    flags,
    offset,
    length,
    into: command === READ ? Buffer.alloc(length, 0xee) : undefined,
    errno: 0,
    message: "",
    errorOffset: -1,
    extents: undefined,
    received: 0,
    spans: undefined,
  };
}

interface Completion {
  cookie: number;
  errno: number;
  message: string;
  errorOffset: number;
  data: string | undefined;
  extents: ReplyTarget["extents"];
}

/** A fresh parser over fresh copies of `requests`; feed it `parts` and report what completed. */
function run(
  requests: ReadonlyMap<number, ReplyTarget>,
  parts: readonly Buffer[],
  options: ReplyParserOptions = { structuredReplies: true },
): Completion[] {
  const table = new Map(
    [...requests].map(([c, t]) => [c, target(t.command, t.offset, t.length, t.flags)]),
  );
  const done: Completion[] = [];
  const handler: ReplyHandler = {
    lookup: (cookie) => table.get(cookie),
    complete: (cookie, t) => {
      table.delete(cookie);
      done.push({
        cookie,
        errno: t.errno,
        message: t.message,
        errorOffset: t.errorOffset,
        data: t.into?.toString("hex"),
        extents: t.extents,
      });
    },
  };
  const parser = new ReplyParser(handler, {
    metaContextIds: new Set([1, 2]),
    allocationContextId: 1,
    ...options,
  });
  for (const part of parts) parser.feed(part);
  expect(parser.idle).toBe(true);
  return done;
}

/** The same stream fed whole, split at every offset, and one byte at a time. */
function runEverySplit(
  requests: ReadonlyMap<number, ReplyTarget>,
  stream: Buffer,
  options?: ReplyParserOptions,
): Completion[] {
  const whole = run(requests, [stream], options);
  for (let split = 0; split <= stream.length; split++) {
    const parts = [stream.subarray(0, split), stream.subarray(split)];
    expect(run(requests, parts, options)).toEqual(whole);
  }
  const bytes = Array.from({ length: stream.length }, (_, i) => stream.subarray(i, i + 1));
  expect(run(requests, bytes, options)).toEqual(whole);
  return whole;
}

function protocolError(
  requests: ReadonlyMap<number, ReplyTarget>,
  stream: Buffer,
  options?: ReplyParserOptions,
): string {
  try {
    run(requests, [stream], options);
  } catch (err) {
    expect(err).toBeInstanceOf(NbdProtocolError);
    return (err as Error).message;
  }
  throw new Error("no protocol error");
}

const payload = Buffer.from("0123456789abcdef");

describe("simple replies", () => {
  const requests = new Map([
    [1, target(WRITE, 0, 512)],
    [2, target(READ, 4096, 16)],
    [3, target(FLUSH, 0, 0)],
  ]);

  it("complete writes, reads with their data, and errors", () => {
    const stream = Buffer.concat([simple(3, 0), simple(2, 0, payload), simple(1, 28)]);
    const done = runEverySplit(requests, stream, { structuredReplies: false });
    expect(done.map((d) => [d.cookie, d.errno])).toEqual([
      [3, 0],
      [2, 0],
      [1, 28],
    ]);
    expect(done[1]?.data).toBe(payload.toString("hex"));
  });

  it("a failed read carries no payload", () => {
    const stream = Buffer.concat([simple(2, 5), simple(1, 0)]);
    const done = runEverySplit(requests, stream, { structuredReplies: false });
    expect(done.map((d) => [d.cookie, d.errno])).toEqual([
      [2, 5],
      [1, 0],
    ]);
  });

  it("matches cookies above 2^32", () => {
    const big = 2 ** 40 + 7;
    const done = run(new Map([[big, target(WRITE, 0, 1)]]), [simple(big, 0)]);
    expect(done[0]?.cookie).toBe(big);
  });
});

describe("structured replies", () => {
  it("reassemble data and hole chunks sent out of order", () => {
    const requests = new Map([[9, target(READ, 1000, 48)]]);
    const stream = Buffer.concat([
      data(9, 0, 1032, payload),
      hole(9, 0, 1016, 16),
      data(9, 0, 1000, payload),
      none(9),
    ]);
    const [done] = runEverySplit(requests, stream);
    expect(done?.errno).toBe(0);
    expect(done?.data).toBe(payload.toString("hex") + "00".repeat(16) + payload.toString("hex"));
  });

  it("accept a final data chunk as the end of the reply", () => {
    const requests = new Map([[4, target(READ, 0, 16)]]);
    const [done] = runEverySplit(requests, data(4, DONE, 0, payload));
    expect(done?.data).toBe(payload.toString("hex"));
  });

  it("interleave chunks of several replies", () => {
    const requests = new Map([
      [1, target(READ, 0, 32)],
      [2, target(WRITE, 0, 4)],
      [3, target(READ, 64, 16)],
    ]);
    const stream = Buffer.concat([
      data(1, 0, 16, payload),
      data(3, 0, 64, payload),
      simple(2, 0),
      data(1, 0, 0, payload),
      none(3),
      none(1),
    ]);
    const done = runEverySplit(requests, stream);
    expect(done.map((d) => d.cookie)).toEqual([2, 3, 1]);
    expect(done[2]?.data).toBe(payload.toString("hex").repeat(2));
  });

  it("report the first error chunk with its message and offset", () => {
    const requests = new Map([[5, target(READ, 0, 32)]]);
    const errorOffset = chunk(
      5,
      0,
      T_ERROR_OFFSET,
      Buffer.concat([u32(5), u16(3), Buffer.from("bad"), u64(16)]),
    );
    const stream = Buffer.concat([data(5, 0, 0, payload), errorOffset, error(5, DONE, 1, "x")]);
    const [done] = runEverySplit(requests, stream);
    expect(done).toMatchObject({ errno: 5, message: "bad", errorOffset: 16 });
  });

  it("treat an unknown error type as an error and skip unknown other types", () => {
    const requests = new Map([
      [1, target(WRITE, 0, 8)],
      [2, target(WRITE, 0, 8)],
    ]);
    const unknownError = chunk(
      1,
      DONE,
      32777,
      Buffer.concat([u32(22), u16(2), Buffer.from("no"), u32(1)]),
    );
    const unknownOther = chunk(2, 0, 77, Buffer.from("ignored payload"));
    const stream = Buffer.concat([unknownError, unknownOther, none(2)]);
    const done = runEverySplit(requests, stream);
    expect(done).toMatchObject([
      { cookie: 1, errno: 22, message: "no" },
      { cookie: 2, errno: 0 },
    ]);
  });

  it("decode block status for base:allocation and skip other contexts", () => {
    const requests = new Map([[6, target(BLOCK_STATUS, 0, 8192)]]);
    const stream = Buffer.concat([
      blockStatus(6, 0, 2, [[512, 7]]),
      blockStatus(6, DONE, 1, [
        [4096, 3],
        [8192, 0],
      ]),
    ]);
    const [done] = runEverySplit(requests, stream);
    expect(done?.extents).toEqual([
      { length: 4096, flags: 3 },
      { length: 8192, flags: 0 },
    ]);
  });

  it("accept a simple error reply to NBD_CMD_READ", () => {
    const requests = new Map([[1, target(READ, 0, 16)]]);
    expect(run(requests, [simple(1, 22)])).toMatchObject([{ errno: 22 }]);
  });
});

describe("protocol errors", () => {
  const read = new Map([[1, target(READ, 100, 16)]]);
  const write = new Map([[1, target(WRITE, 0, 16)]]);
  const status = new Map([[1, target(BLOCK_STATUS, 0, 1000)]]);
  const statusOne = new Map([[1, target(BLOCK_STATUS, 0, 1000, REQ_ONE)]]);

  it.each([
    [
      "bad magic",
      write,
      Buffer.from("deadbeef00000000000000000000000000000000", "hex"),
      /bad reply magic/,
    ],
    ["unknown cookie", write, simple(2, 0), /unknown cookie 0x0000000000000002/],
    ["data before the request", read, data(1, DONE, 99, payload), /outside the request/],
    ["data past the request", read, data(1, DONE, 101, payload), /outside the request/],
    ["data longer than the request", read, data(1, DONE, 100, Buffer.alloc(17)), /length 25/],
    ["hole past the request", read, hole(1, DONE, 110, 8), /outside the request/],
    ["empty hole", read, hole(1, DONE, 100, 0), /size 0/],
    [
      "overlapping chunks",
      read,
      Buffer.concat([data(1, 0, 100, Buffer.alloc(8)), hole(1, DONE, 104, 8)]),
      /overlaps/,
    ],
    [
      "success without all data",
      read,
      Buffer.concat([data(1, 0, 100, Buffer.alloc(8)), none(1)]),
      /8 of 16/,
    ],
    [
      "simple data reply to a read",
      read,
      simple(1, 0, payload),
      /structured replies were negotiated/,
    ],
    ["NONE with a payload", write, chunk(1, DONE, T_NONE, Buffer.alloc(1)), /1 bytes of payload/],
    [
      "NONE without DONE",
      write,
      chunk(1, 0, T_NONE, Buffer.alloc(0)),
      /without NBD_REPLY_FLAG_DONE/,
    ],
    ["data in reply to a write", write, data(1, DONE, 0, payload), /in reply to NBD_CMD_WRITE/],
    [
      "block status for a read",
      read,
      blockStatus(1, DONE, 1, [[8, 0]]),
      /in reply to NBD_CMD_READ/,
    ],
    ["unnegotiated context", status, blockStatus(1, DONE, 9, [[8, 0]]), /context 9/],
    ["zero-length extent", status, blockStatus(1, DONE, 1, [[0, 0]]), /length 0/],
    [
      "extents past the request",
      status,
      blockStatus(1, DONE, 1, [
        [1000, 0],
        [8, 0],
      ]),
      /go past/,
    ],
    [
      "two extents with REQ_ONE",
      statusOne,
      blockStatus(1, DONE, 1, [
        [8, 0],
        [8, 0],
      ]),
      /REQ_ONE/,
    ],
    ["REQ_ONE extent too long", statusOne, blockStatus(1, DONE, 1, [[1001, 0]]), /go past/],
    [
      "two allocation chunks",
      status,
      Buffer.concat([blockStatus(1, 0, 1, [[8, 0]]), blockStatus(1, DONE, 1, [[8, 0]])]),
      /two NBD_REPLY_TYPE_BLOCK_STATUS/,
    ],
    ["block status success without extents", status, none(1), /without base:allocation/],
    [
      "error message longer than the chunk",
      write,
      chunk(1, DONE, T_ERROR, Buffer.concat([u32(5), u16(9), Buffer.from("ab")])),
      /exceeds the chunk/,
    ],
    ["error value 0", write, error(1, DONE, 0, ""), /error value 0/],
    ["short error chunk", write, chunk(1, DONE, T_ERROR, Buffer.alloc(5)), /invalid length 5/],
    [
      "error offset outside the request",
      read,
      chunk(1, DONE, T_ERROR_OFFSET, Buffer.concat([u32(5), u16(0), u64(0)])),
      /offset 0 lies outside/,
    ],
  ])("%s", (_name, requests, stream, message) => {
    expect(protocolError(requests, stream)).toMatch(message);
  });

  it("structured chunk when structured replies are off", () => {
    expect(protocolError(write, none(1), { structuredReplies: false })).toMatch(/are off/);
  });

  it("refuses an oversized block status chunk from its header alone", () => {
    const header = chunk(1, DONE, T_BLOCK_STATUS, Buffer.alloc(0));
    header.writeUInt32BE(4 + 8 * 2 ** 21, 16);
    expect(protocolError(status, header)).toMatch(/invalid length/);
  });

  it("refuses an oversized error chunk from its header alone", () => {
    const header = chunk(1, DONE, T_ERROR, Buffer.alloc(0));
    header.writeUInt32BE(2 ** 31, 16);
    expect(protocolError(write, header)).toMatch(/invalid length/);
  });

  it("accepts nothing more after a protocol error", () => {
    let completions = 0;
    const parser = new ReplyParser(
      { lookup: () => target(WRITE, 0, 1), complete: () => completions++ },
      { structuredReplies: true },
    );
    expect(() => parser.feed(Buffer.alloc(20))).toThrow(NbdProtocolError);
    expect(parser.failed).toBe(true);
    parser.feed(simple(1, 0));
    expect(completions).toBe(0);
  });
});

describe("properties", () => {
  // A random read: the range is cut into pieces, each sent as data or a hole,
  // in a random order, optionally ending with NBD_REPLY_TYPE_NONE.
  const readReply = fc
    .array(
      fc.tuple(
        fc.integer({ min: 1, max: 40 }),
        fc.boolean(),
        fc.uint8Array({ minLength: 40, maxLength: 40 }),
      ),
      {
        minLength: 1,
        maxLength: 12,
      },
    )
    .chain((pieces) =>
      fc.record({
        pieces: fc.constant(pieces),
        order: fc.shuffledSubarray(
          pieces.map((_, i) => i),
          { minLength: pieces.length },
        ),
        trailingNone: fc.boolean(),
        offset: fc.nat({ max: 2 ** 40 }),
      }),
    );

  fcTest.prop([readReply, fc.array(fc.nat(), { maxLength: 8 })])(
    "any chunk order and any cut points give the expected bytes",
    ({ pieces, order, trailingNone, offset }, cuts) => {
      const length = pieces.reduce((sum, [size]) => sum + size, 0);
      const expected = Buffer.alloc(length);
      const chunks: Buffer[] = [];
      let at = 0;
      const starts = pieces.map(([size]) => {
        const start = at;
        at += size;
        return start;
      });
      for (const [i, [size, isHole, bytes]] of pieces.entries()) {
        if (!isHole) Buffer.from(bytes.subarray(0, size)).copy(expected, starts[i]);
      }
      order.forEach((i, k) => {
        const [size, isHole, bytes] = pieces[i] ?? [0, true, new Uint8Array()];
        const start = starts[i] ?? 0;
        const last = k === order.length - 1 && !trailingNone ? DONE : 0;
        chunks.push(
          isHole
            ? hole(1, last, offset + start, size)
            : data(1, last, offset + start, Buffer.from(bytes.subarray(0, size))),
        );
      });
      if (trailingNone) chunks.push(none(1));
      const stream = Buffer.concat(chunks);
      const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
      const parts = [0, ...points, stream.length]
        .slice(1)
        .map((end, i, ends) => stream.subarray(i === 0 ? 0 : (ends[i - 1] ?? 0), end));
      const requests = new Map([[1, target(READ, offset, length)]]);
      const [done] = run(requests, parts);
      expect(done?.errno).toBe(0);
      expect(done?.data).toBe(expected.toString("hex"));
    },
  );

  const event = fc.oneof(
    fc.record({ kind: fc.constant("simple" as const), error: fc.constantFrom(0, 0, 5, 22) }),
    fc.record({ kind: fc.constant("error" as const), message: fc.string({ maxLength: 20 }) }),
    fc.record({ kind: fc.constant("none" as const) }),
  );

  fcTest.prop([
    fc.array(event, { minLength: 1, maxLength: 20 }),
    fc.array(fc.nat(), { maxLength: 10 }),
  ])("a stream of many replies parses the same however it is cut", (events, cuts) => {
    const requests = new Map(events.map((_, i) => [i + 1, target(WRITE, 0, 512)]));
    const stream = Buffer.concat(
      events.map((e, i) =>
        e.kind === "simple"
          ? simple(i + 1, e.error)
          : e.kind === "error"
            ? error(i + 1, DONE, 28, e.message)
            : none(i + 1),
      ),
    );
    const whole = run(requests, [stream]);
    expect(whole).toHaveLength(events.length);
    const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
    const parts: Buffer[] = [];
    let from = 0;
    for (const p of points) {
      parts.push(stream.subarray(from, p));
      from = p;
    }
    parts.push(stream.subarray(from));
    expect(run(requests, parts)).toEqual(whole);
  });
});
