// ServerParser: what a client sends, fed whole, split at every offset, one byte
// at a time and in random chunkings. Fixtures come from test/helpers/nbd-fixtures.
import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_OPT_STRUCTURED_REPLY,
} from "../../nbd/constants.js";
import {
  ServerParser,
  type NbdRequest,
  type ServerParserSink,
} from "../../nbd/codec/server-parser.js";
import { NbdProtocolError } from "../../nbd/errors.js";
import {
  cat,
  clientFlags,
  cookieHalves,
  goData,
  optionHeader,
  optionRequest,
  request,
  u32,
  type RequestFields,
} from "../helpers/nbd-fixtures.js";

const MiB = 1024 * 1024;

type Event =
  | { kind: "flags"; flags: number }
  | { kind: "option"; option: number; data: string }
  | { kind: "oversized"; option: number; length: number }
  | {
      kind: "request";
      flags: number;
      type: number;
      cookieHi: number;
      cookieLo: number;
      offset: number;
      length: number;
      payload: string | null;
    }
  | { kind: "error"; message: string };

/** Records every sink call; enters transmission on NBD_OPT_GO like the server does. */
class Recorder implements ServerParserSink {
  readonly events: Event[] = [];
  readonly requests: NbdRequest[] = [];
  readonly errors: NbdProtocolError[] = [];
  parser: ServerParser;

  constructor(maxOptionLength?: number, maxPayload?: number) {
    this.parser = new ServerParser(this, maxOptionLength, maxPayload);
  }

  onClientFlags(flags: number): void {
    this.events.push({ kind: "flags", flags });
  }
  onOption(option: number, data: Buffer): void {
    this.events.push({ kind: "option", option, data: data.toString("hex") });
    if (option === NBD_OPT_GO) this.parser.enterTransmission();
  }
  onOversizedOption(option: number, length: number): void {
    this.events.push({ kind: "oversized", option, length });
  }
  onRequest(r: NbdRequest): void {
    this.requests.push(r);
    this.events.push({
      kind: "request",
      flags: r.flags,
      type: r.type,
      cookieHi: r.cookieHi,
      cookieLo: r.cookieLo,
      offset: r.offset,
      length: r.length,
      // Hex keeps toEqual diffs readable; huge payloads are only checked by size.
      payload:
        r.payload === null
          ? null
          : r.payload.length > MiB
            ? `${r.payload.length} bytes`
            : r.payload.toString("hex"),
    });
  }
  onProtocolError(error: NbdProtocolError): void {
    this.errors.push(error);
    this.events.push({ kind: "error", message: error.message });
  }
}

/** A recorder already in transmission, as after a successful NBD_OPT_GO. */
function transmitting(maxPayload?: number): Recorder {
  const r = new Recorder(undefined, maxPayload);
  r.parser.enterTransmission();
  return r;
}

function feed(r: Recorder, bytes: Buffer, cuts: readonly number[]): Recorder {
  let from = 0;
  for (const cut of [...cuts].sort((a, b) => a - b)) {
    r.parser.push(bytes.subarray(from, cut));
    from = cut;
  }
  r.parser.push(bytes.subarray(from));
  return r;
}

function expectedRequest(f: RequestFields, payload: Buffer | null): Event {
  const { hi, lo } = cookieHalves(f.cookie);
  return {
    kind: "request",
    flags: f.flags ?? 0,
    type: f.type,
    cookieHi: hi,
    cookieLo: lo,
    offset: Number(f.offset),
    length: f.length,
    payload: payload === null ? null : payload.toString("hex"),
  };
}

// A whole session: flags, options (one oversized for a limit of 32 bytes), GO,
// then every kind of request including WRITEs with and without payload.
const writeData = Buffer.from(Array.from({ length: 300 }, (_, i) => (i * 7) & 0xff));
const reqs: [RequestFields, Buffer | null][] = [
  [{ type: NBD_CMD_READ, cookie: 1n, offset: 0, length: 512 }, null],
  [
    { type: NBD_CMD_WRITE, flags: 1, cookie: 0xdeadbeef_cafef00dn, offset: 4096, length: 300 },
    writeData,
  ],
  [{ type: NBD_CMD_FLUSH, cookie: 3n, offset: 0, length: 0 }, null],
  [{ type: NBD_CMD_WRITE, cookie: 4n, offset: 2n ** 63n + 1n, length: 0 }, null],
  [
    {
      type: NBD_CMD_BLOCK_STATUS,
      flags: 8,
      cookie: 2n ** 64n - 1n,
      offset: 1,
      length: 2 ** 32 - 1,
    },
    null,
  ],
  [{ type: NBD_CMD_WRITE, cookie: 6n, offset: 7, length: 1 }, Buffer.from([0xaa])],
  [{ type: NBD_CMD_DISC, cookie: 7n, offset: 0, length: 0 }, null],
];
const session = cat(
  clientFlags(3),
  optionRequest(NBD_OPT_STRUCTURED_REPLY),
  optionRequest(NBD_OPT_LIST, Buffer.alloc(40, 0x55)),
  optionRequest(99, Buffer.from("hello")),
  optionRequest(NBD_OPT_GO, goData("disk", [1, 3])),
  ...reqs.map(([f, p]) => request(f, p ?? undefined)),
);
const sessionEvents: Event[] = [
  { kind: "flags", flags: 3 },
  { kind: "option", option: NBD_OPT_STRUCTURED_REPLY, data: "" },
  { kind: "oversized", option: NBD_OPT_LIST, length: 40 },
  { kind: "option", option: 99, data: Buffer.from("hello").toString("hex") },
  { kind: "option", option: NBD_OPT_GO, data: goData("disk", [1, 3]).toString("hex") },
  ...reqs.map(([f, p]) => expectedRequest(f, p)),
];

describe("ServerParser: every message kind", () => {
  it("parses a whole session fed in one chunk", () => {
    expect(feed(new Recorder(32), session, []).events).toEqual(sessionEvents);
  });

  it("gives the same calls when split at every offset", () => {
    for (let cut = 1; cut < session.length; cut++) {
      expect(feed(new Recorder(32), session, [cut]).events, `cut at ${cut}`).toEqual(sessionEvents);
    }
  });

  it("gives the same calls fed one byte at a time", () => {
    const r = new Recorder(32);
    for (let i = 0; i < session.length; i++) r.parser.push(session.subarray(i, i + 1));
    expect(r.events).toEqual(sessionEvents);
  });

  it("ignores empty chunks", () => {
    const r = new Recorder(32);
    for (let i = 0; i < session.length; i++) {
      r.parser.push(Buffer.alloc(0));
      r.parser.push(session.subarray(i, i + 1));
    }
    expect(r.events).toEqual(sessionEvents);
  });

  it("echoes both cookie halves and keeps offsets beyond 2^53", () => {
    const r = feed(
      transmitting(),
      request({
        type: NBD_CMD_READ,
        cookie: 0x01234567_89abcdefn,
        offset: 2n ** 64n - 1n,
        length: 1,
      }),
      [],
    );
    const req = r.requests[0] as NbdRequest;
    expect(req.cookieHi).toBe(0x01234567);
    expect(req.cookieLo).toBe(0x89abcdef);
    expect(req.offset).toBe(2 ** 64);
    expect(req.offset > Number.MAX_SAFE_INTEGER).toBe(true);
  });
});

describe("ServerParser: zero-copy WRITE payloads", () => {
  it("hands out a view of the chunk when the payload is wholly inside it", () => {
    const payload = Buffer.alloc(1000, 0x42);
    // Buffer.alloc never takes memory from the shared pool, so sharing an
    // ArrayBuffer with it can only mean the parser did not copy.
    const chunk = Buffer.alloc(28 + 1000 + 28);
    cat(
      request({ type: NBD_CMD_WRITE, cookie: 9n, offset: 0, length: 1000 }, payload),
      request({ type: NBD_CMD_FLUSH, cookie: 10n, offset: 0, length: 0 }),
    ).copy(chunk);
    const r = feed(transmitting(), chunk, []);
    const got = r.requests[0]?.payload as Buffer;
    expect(got.buffer).toBe(chunk.buffer);
    expect(got.byteOffset).toBe(chunk.byteOffset + 28);
    chunk[28] = 0x43;
    expect(got[0]).toBe(0x43);
    expect(r.requests[1]?.type).toBe(NBD_CMD_FLUSH);
  });

  it("also when the header straddled the previous chunk", () => {
    const bytes = request(
      { type: NBD_CMD_WRITE, cookie: 9n, offset: 0, length: 100 },
      Buffer.alloc(100, 7),
    );
    const first = Buffer.alloc(10);
    const second = Buffer.alloc(bytes.length - 10);
    bytes.copy(first, 0, 0, 10);
    bytes.copy(second, 0, 10);
    const r = transmitting();
    r.parser.push(first);
    r.parser.push(second);
    expect(r.requests[0]?.payload?.buffer).toBe(second.buffer);
  });

  it("copies a payload that spans chunks into a buffer of its own", () => {
    const bytes = request(
      { type: NBD_CMD_WRITE, cookie: 9n, offset: 0, length: 100 },
      Buffer.alloc(100, 7),
    );
    const first = Buffer.alloc(50);
    const second = Buffer.alloc(bytes.length - 50);
    bytes.copy(first, 0, 0, 50);
    bytes.copy(second, 0, 50);
    const r = transmitting();
    r.parser.push(first);
    expect(r.requests).toHaveLength(0);
    r.parser.push(second);
    const got = r.requests[0]?.payload as Buffer;
    expect(got.equals(Buffer.alloc(100, 7))).toBe(true);
    expect(got.buffer).not.toBe(first.buffer);
    expect(got.buffer).not.toBe(second.buffer);
  });
});

describe("ServerParser: limits and protocol errors", () => {
  it("skips an option claiming 1 GiB without allocating it, then parses the next", () => {
    const r = new Recorder();
    r.parser.push(clientFlags(1));
    const before = process.memoryUsage().arrayBuffers;
    r.parser.push(cat(optionHeader(NBD_OPT_LIST, 1024 * MiB), Buffer.alloc(5)));
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(8 * MiB);
    expect(r.events).toEqual([{ kind: "flags", flags: 1 }]);
    // Skip the rest by pushing one reused MiB; the skip itself must not buffer it.
    const block = Buffer.alloc(MiB);
    r.parser.push(block.subarray(5));
    for (let i = 1; i < 1024; i++) r.parser.push(block);
    expect(r.events.at(-1)).toEqual({
      kind: "oversized",
      option: NBD_OPT_LIST,
      length: 1024 * MiB,
    });
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(8 * MiB);
    r.parser.push(optionRequest(NBD_OPT_STRUCTURED_REPLY));
    expect(r.events.at(-1)).toEqual({ kind: "option", option: NBD_OPT_STRUCTURED_REPLY, data: "" });
  });

  it("an option exactly at the limit is delivered, one byte over is skipped", () => {
    const r = new Recorder(16);
    feed(
      r,
      cat(
        clientFlags(0),
        optionRequest(5, Buffer.alloc(16, 1)),
        optionRequest(6, Buffer.alloc(17, 1)),
      ),
      [],
    );
    expect(r.events.slice(1)).toEqual([
      { kind: "option", option: 5, data: "01".repeat(16) },
      { kind: "oversized", option: 6, length: 17 },
    ]);
  });

  it("a WRITE claiming 33 MiB is a protocol error and nothing after it is parsed", () => {
    const r = transmitting();
    const before = process.memoryUsage().arrayBuffers;
    r.parser.push(
      cat(
        request({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 33 * MiB }),
        Buffer.alloc(64),
        request({ type: NBD_CMD_FLUSH, cookie: 2n, offset: 0, length: 0 }),
      ),
    );
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(16 * MiB);
    expect(r.requests).toHaveLength(0);
    expect(r.errors).toHaveLength(1);
    expect(r.errors[0]).toBeInstanceOf(NbdProtocolError);
    expect(r.errors[0]?.code).toBe("NBD_PROTOCOL");
    expect(r.parser.stopped).toBe(true);
    r.parser.push(request({ type: NBD_CMD_FLUSH, cookie: 3n, offset: 0, length: 0 }));
    expect(r.events).toHaveLength(1);
  });

  it("a WRITE of exactly 32 MiB is accepted", () => {
    const r = transmitting();
    r.parser.push(request({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 32 * MiB }));
    r.parser.push(Buffer.alloc(32 * MiB, 1));
    expect(r.errors).toHaveLength(0);
    expect(r.requests[0]?.payload?.length).toBe(32 * MiB);
  });

  it("a bad request magic is a protocol error", () => {
    const bad = request({ type: NBD_CMD_READ, cookie: 1n, offset: 0, length: 1 });
    bad.writeUInt32BE(0x25609514, 0);
    for (let cut = 0; cut <= bad.length; cut++) {
      const r = feed(
        transmitting(),
        cat(bad, request({ type: NBD_CMD_FLUSH, cookie: 2n, offset: 0, length: 0 })),
        cut === 0 ? [] : [cut],
      );
      expect(r.events.map((e) => e.kind)).toEqual(["error"]);
    }
  });

  it("an option without IHAVEOPT is a protocol error", () => {
    const r = feed(new Recorder(), cat(clientFlags(1), u32(0), optionRequest(NBD_OPT_LIST)), []);
    expect(r.events.map((e) => e.kind)).toEqual(["flags", "error"]);
    expect(r.parser.stopped).toBe(true);
  });

  it("stop() ignores further input, even mid-payload", () => {
    const r = transmitting();
    r.parser.push(
      request({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 10 }, Buffer.alloc(5)),
    );
    r.parser.stop();
    r.parser.push(Buffer.alloc(5));
    r.parser.push(request({ type: NBD_CMD_FLUSH, cookie: 2n, offset: 0, length: 0 }));
    expect(r.events).toEqual([]);
    expect(r.parser.stopped).toBe(true);
  });
});

const requestArb = (maxWrite: number) =>
  fc
    .record({
      type: fc.oneof(
        fc.constantFrom(0, 1, 1, 1, 2, 3, 4, 5, 6, 7),
        fc.integer({ min: 0, max: 0xffff }),
      ),
      flags: fc.integer({ min: 0, max: 0xffff }),
      cookie: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
      offset: fc.oneof(
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.bigInt({ min: 0n, max: 2n ** 20n }),
      ),
      length: fc.nat({ max: 0xffff_ffff }),
      writeLength: fc.oneof(fc.constant(0), fc.nat({ max: 64 }), fc.nat({ max: maxWrite })),
      fill: fc.nat({ max: 255 }),
    })
    .map(({ type, flags, cookie, offset, length, writeLength, fill }) => {
      const isWrite = type === NBD_CMD_WRITE;
      const len = isWrite ? writeLength : length;
      const payload = isWrite && len > 0 ? Buffer.alloc(len, fill) : null;
      if (payload !== null && payload.length > 1) payload[payload.length - 1] = fill ^ 0xff;
      const fields: RequestFields = { type, flags, cookie, offset, length: len };
      return { fields, payload };
    });

describe("ServerParser: properties", () => {
  fcTest.prop(
    [
      fc.array(requestArb(70_000), { minLength: 1, maxLength: 12 }),
      fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 20 }),
    ],
    { numRuns: 150 },
  )("any request sequence in any chunking parses to the reference list", (list, fractions) => {
    const bytes = cat(...list.map((r) => request(r.fields, r.payload ?? undefined)));
    const cuts = fractions.map((f) => Math.floor(f * bytes.length));
    const r = feed(transmitting(), bytes, cuts);
    expect(r.events).toEqual(list.map((x) => expectedRequest(x.fields, x.payload)));
  });

  fcTest.prop([fc.array(requestArb(600), { minLength: 1, maxLength: 6 })], { numRuns: 40 })(
    "one byte at a time parses to the reference list",
    (list) => {
      const bytes = cat(...list.map((r) => request(r.fields, r.payload ?? undefined)));
      const r = transmitting();
      for (let i = 0; i < bytes.length; i++) r.parser.push(bytes.subarray(i, i + 1));
      expect(r.events).toEqual(list.map((x) => expectedRequest(x.fields, x.payload)));
    },
  );
});
