// Handshake-phase codec and request encoding. Fixtures are written out byte by
// byte here, independently of the encoders under test.
import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { readU64, writeU64 } from "../../nbd/codec/client-bytes.js";
import { HandshakeParser } from "../../nbd/codec/client-handshake.js";
import {
  applyInfoReply,
  decodeMetaContextReply,
  decodeServerReply,
  encodeClientFlags,
  encodeExportNameOption,
  encodeInfoOption,
  encodeMetaContextOption,
  encodeOption,
  type ExportDetails,
} from "../../nbd/codec/client-options.js";
import { RequestHeaderSlab, encodeRequest } from "../../nbd/codec/client-request.js";
import { claimSpan, type Coverage } from "../../nbd/codec/client-spans.js";
import { NbdProtocolError } from "../../nbd/errors.js";

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ""), "hex");
const IHAVEOPT = "49484156454f5054";
const NBDMAGIC = "4e42444d41474943";
const REPLY_MAGIC = "0003e889045565a9";

/** Feed `bytes` one at a time; `read` must yield nothing until the last byte. */
function feedBytewise<T>(parser: HandshakeParser, bytes: Buffer, read: () => T | undefined): T {
  for (let i = 0; i < bytes.length - 1; i++) {
    parser.push(bytes.subarray(i, i + 1));
    expect(read()).toBeUndefined();
  }
  parser.push(bytes.subarray(bytes.length - 1));
  const value = read();
  expect(value).toBeDefined();
  return value as T;
}

describe("option encoders", () => {
  it("client flags are 32 bits", () => {
    expect(encodeClientFlags(3)).toEqual(hex("00000003"));
  });

  it("NBD_OPT_STRUCTURED_REPLY has no data", () => {
    expect(encodeOption(8)).toEqual(hex(`${IHAVEOPT} 00000008 00000000`));
  });

  it("NBD_OPT_EXPORT_NAME carries the bare name", () => {
    expect(encodeExportNameOption("ab")).toEqual(hex(`${IHAVEOPT} 00000001 00000002 6162`));
  });

  it("NBD_OPT_GO: name length, name, info count, info types", () => {
    expect(encodeInfoOption(7, "disk", [3])).toEqual(
      hex(`${IHAVEOPT} 00000007 0000000c 00000004 6469736b 0001 0003`),
    );
    expect(encodeInfoOption(6, "", [1, 2, 3])).toEqual(
      hex(`${IHAVEOPT} 00000006 0000000c 00000000 0003 0001 0002 0003`),
    );
  });

  it("NBD_OPT_SET_META_CONTEXT: name, query count, length-prefixed queries", () => {
    expect(encodeMetaContextOption(10, "e", ["base:allocation"])).toEqual(
      hex(
        `${IHAVEOPT} 0000000a 0000001c 00000001 65 00000001 0000000f` +
          Buffer.from("base:allocation").toString("hex"),
      ),
    );
  });

  fcTest.prop([
    fc.string({ maxLength: 50 }),
    fc.array(fc.string({ maxLength: 30 }), { maxLength: 4 }),
  ])("meta context option decodes back to its name and queries", (name, queries) => {
    const buf = encodeMetaContextOption(9, name, queries);
    expect(buf.readBigUInt64BE(0)).toBe(0x49484156454f5054n);
    expect(buf.readUInt32BE(8)).toBe(9);
    expect(buf.readUInt32BE(12)).toBe(buf.length - 16);
    let at = 16;
    const nameLength = buf.readUInt32BE(at);
    expect(buf.toString("utf8", at + 4, at + 4 + nameLength)).toBe(name);
    at += 4 + nameLength;
    const count = buf.readUInt32BE(at);
    at += 4;
    const decoded: string[] = [];
    for (let i = 0; i < count; i++) {
      const n = buf.readUInt32BE(at);
      decoded.push(buf.toString("utf8", at + 4, at + 4 + n));
      at += 4 + n;
    }
    expect(decoded).toEqual(queries);
    expect(at).toBe(buf.length);
  });
});

describe("HandshakeParser", () => {
  it("reads the newstyle greeting one byte at a time", () => {
    const parser = new HandshakeParser();
    const greeting = feedBytewise(parser, hex(`${NBDMAGIC} ${IHAVEOPT} 0003`), () =>
      parser.readGreeting(),
    );
    expect(greeting).toEqual({ newstyle: true, handshakeFlags: 3 });
    expect(parser.buffered).toBe(0);
  });

  it("recognises an oldstyle server", () => {
    const parser = new HandshakeParser();
    parser.push(hex(`${NBDMAGIC} 0000420281861253`));
    expect(parser.readGreeting()).toEqual({ newstyle: false });
  });

  it("rejects a peer that is not an NBD server", () => {
    const parser = new HandshakeParser();
    parser.push(Buffer.from("HTTP/1.1 400 Bad Request\r\n"));
    expect(() => parser.readGreeting()).toThrow(NbdProtocolError);
  });

  const infoExport = hex(`${REPLY_MAGIC} 00000007 00000003 0000000c 0000 0000000004000000 04ed`);
  const ack = hex(`${REPLY_MAGIC} 00000007 00000001 00000000`);

  it("reads option replies split at every offset", () => {
    const stream = Buffer.concat([infoExport, ack]);
    for (let split = 0; split <= stream.length; split++) {
      const parser = new HandshakeParser();
      const replies = [];
      for (const part of [stream.subarray(0, split), stream.subarray(split)]) {
        parser.push(part);
        for (let r = parser.readOptionReply(7); r !== undefined; r = parser.readOptionReply(7)) {
          replies.push(r);
        }
      }
      expect(replies.map((r) => r.type)).toEqual([3, 1]);
      expect(replies[0]?.payload).toEqual(hex("0000 0000000004000000 04ed"));
      expect(replies[1]?.payload.length).toBe(0);
    }
  });

  it("checks the declared length before waiting for the payload", () => {
    const parser = new HandshakeParser();
    parser.push(hex(`${REPLY_MAGIC} 00000007 00000003 00010001`));
    expect(() => parser.readOptionReply(7)).toThrow(/exceeds the limit/);
  });

  it("rejects a reply to another option and a bad magic", () => {
    const parser = new HandshakeParser();
    parser.push(ack);
    expect(() => parser.readOptionReply(8)).toThrow(/expected 8/);
    const bad = new HandshakeParser();
    bad.push(hex(`0003e889045565aa 00000007 00000001 00000000`));
    expect(() => bad.readOptionReply(7)).toThrow(/magic/);
  });

  it("reads the NBD_OPT_EXPORT_NAME reply with and without the 124 zero bytes", () => {
    const reply = hex("0000000000100000 0003");
    const padded = new HandshakeParser();
    const value = feedBytewise(padded, Buffer.concat([reply, Buffer.alloc(124)]), () =>
      padded.readExportNameReply(true),
    );
    expect(value).toEqual({ size: 0x100000, transmissionFlags: 3 });
    const bare = new HandshakeParser();
    bare.push(Buffer.concat([reply, hex("ff")]));
    expect(bare.readExportNameReply(false)).toEqual({ size: 0x100000, transmissionFlags: 3 });
    expect(Buffer.concat(bare.drain())).toEqual(hex("ff"));
  });

  it("refuses export sizes beyond 2^53 - 1", () => {
    const parser = new HandshakeParser();
    parser.push(hex("0020000000000000 0001"));
    expect(() => parser.readExportNameReply(false)).toThrow(/2\^53/);
  });
});

describe("option reply payloads", () => {
  it("applies NBD_REP_INFO of every known type and ignores others", () => {
    const details: ExportDetails = {};
    applyInfoReply(hex("0000 0000000100000000 0d6f"), details);
    applyInfoReply(hex("0001 6e616d65"), details);
    applyInfoReply(hex("0002 64657363"), details);
    applyInfoReply(hex("0003 00000200 00001000 02000000"), details);
    applyInfoReply(hex("0063 0102030405"), details);
    expect(details).toEqual({
      size: 2 ** 32,
      transmissionFlags: 0x0d6f,
      name: "name",
      description: "desc",
      blockSizes: { minimum: 512, preferred: 4096, maximum: 32 * 1024 * 1024 },
    });
  });

  it.each([
    ["0000 00000000000000", /NBD_INFO_EXPORT has length 9/],
    ["0003 00000200 00001000", /NBD_INFO_BLOCK_SIZE has length 10/],
    ["0003 00000300 00001000 00100000", /minimum must be a power of 2/],
    ["0003 00020000 00020000 00100000", /minimum must be a power of 2 up to 65536/],
    ["0003 00001000 00000200 00100000", /preferred must be a power of 2/],
    ["0003 00001000 00001000 00000200", /maximum is smaller/],
    ["00", /shorter than 2 bytes/],
  ])("rejects NBD_REP_INFO %s", (payload, message) => {
    expect(() => applyInfoReply(hex(payload), {})).toThrow(message);
  });

  it("decodes NBD_REP_SERVER and NBD_REP_META_CONTEXT", () => {
    expect(decodeServerReply(hex("00000002 6869 6465736372"))).toEqual({
      name: "hi",
      description: "descr",
    });
    expect(() => decodeServerReply(hex("00000009 6869"))).toThrow(NbdProtocolError);
    expect(decodeMetaContextReply(hex("00000007 626173653a61"))).toEqual({
      id: 7,
      name: "base:a",
    });
    expect(() => decodeMetaContextReply(hex("00000007"))).toThrow(NbdProtocolError);
  });
});

describe("request encoding", () => {
  it("writes magic, flags, type, cookie, offset, length", () => {
    const buf = Buffer.alloc(28);
    encodeRequest(buf, 0, 0x0001, 1, 0x1_0000_0002, 0x12_3456_789a, 0x10000);
    expect(buf).toEqual(hex("25609513 0001 0001 0000000100000002 000000123456789a 00010000"));
  });

  fcTest.prop([fc.maxSafeNat(), fc.maxSafeNat(), fc.nat({ max: 0xffff_ffff })])(
    "64-bit fields round trip as numbers",
    (cookie, offset, length) => {
      const buf = Buffer.alloc(28);
      encodeRequest(buf, 0, 0, 0, cookie, offset, length);
      expect(buf.readBigUInt64BE(8)).toBe(BigInt(cookie));
      expect(readU64(buf, 8)).toBe(cookie);
      expect(readU64(buf, 16)).toBe(offset);
      expect(buf.readUInt32BE(24)).toBe(length);
    },
  );

  it("readU64 maps values beyond 2^53 - 1 to -1", () => {
    const buf = Buffer.alloc(8);
    buf.writeBigUInt64BE(2n ** 53n);
    expect(readU64(buf, 0)).toBe(-1);
    writeU64(buf, Number.MAX_SAFE_INTEGER, 0);
    expect(buf.readBigUInt64BE(0)).toBe(2n ** 53n - 1n);
  });

  it("header slab never hands out the same bytes twice", () => {
    const slab = new RequestHeaderSlab();
    const headers = Array.from({ length: 1200 }, () => slab.take()); // more than one slab;
    headers.forEach((header, i) => {
      expect(header.length).toBe(28);
      for (let at = 0; at < 28; at += 4) header.writeUInt32BE(i, at);
    });
    headers.forEach((header, i) => {
      for (let at = 0; at < 28; at += 4) expect(header.readUInt32BE(at)).toBe(i);
    });
  });
});

describe("claimSpan", () => {
  const coverage = (length: number): Coverage => ({ length, received: 0, spans: undefined });

  it("accepts one chunk covering everything, then nothing more", () => {
    const c = coverage(100);
    expect(claimSpan(c, 0, 100)).toBe(true);
    expect(claimSpan(c, 50, 1)).toBe(false);
  });

  fcTest.prop([
    fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 20 }).chain((sizes) =>
      fc.tuple(
        fc.constant(sizes),
        fc.shuffledSubarray(
          sizes.map((_, i) => i),
          { minLength: sizes.length },
        ),
      ),
    ),
    fc.integer({ min: 0, max: 999 }),
  ])(
    "any order of a partition is accepted; any further byte is an overlap",
    ([sizes, order], probe) => {
      const starts: number[] = [];
      let total = 0;
      for (const size of sizes) {
        starts.push(total);
        total += size;
      }
      const c = coverage(total);
      for (const i of order) expect(claimSpan(c, starts[i] ?? 0, sizes[i] ?? 0)).toBe(true);
      expect(c.received).toBe(total);
      expect(claimSpan(c, probe % total, 1)).toBe(false);
    },
  );

  fcTest.prop([
    fc.array(fc.tuple(fc.nat({ max: 63 }), fc.integer({ min: 1, max: 16 })), { maxLength: 30 }),
  ])("agrees with a byte map", (claims) => {
    const c = coverage(80);
    const used = new Array<boolean>(80).fill(false);
    for (const [start, size] of claims) {
      const overlaps = used.slice(start, start + size).some(Boolean);
      expect(claimSpan(c, start, size)).toBe(!overlaps);
      if (!overlaps) used.fill(true, start, start + size);
    }
    expect(c.received).toBe(used.filter(Boolean).length);
  });
});
