// Server reply encoders, checked byte for byte against hand-built fixtures.
import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_SET_META_CONTEXT,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from "../../nbd/constants.js";
import {
  allocReadReply,
  encodeBlockStatus,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeInfoString,
  encodeMetaContext,
  encodeOptionError,
  encodeOptionReply,
  encodeRepServer,
  encodeSimpleReply,
  encodeStructuredError,
  readReplyOverhead,
} from "../../nbd/codec/server-replies.js";
import {
  blockStatusChunk,
  cookieHalves,
  exportNameReply,
  greeting,
  infoBlockSize,
  infoDescription,
  infoExport,
  infoName,
  metaContextReply,
  offsetDataChunk,
  optionReply,
  repServer,
  simpleReply,
  structuredErrorChunk,
} from "../helpers/nbd-fixtures.js";

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ""), "hex");
const OPT_REPLY = "0003e889045565a9";

describe("handshake encoders", () => {
  it("greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE | NO_ZEROES", () => {
    const g = encodeGreeting();
    expect(g).toEqual(greeting(3));
    expect(g).toEqual(hex("4e42444d41474943 49484156454f5054 0003"));
  });

  it("option reply without data", () => {
    expect(encodeOptionReply(NBD_OPT_LIST, NBD_REP_ACK)).toEqual(optionReply(3, 1));
    expect(encodeOptionReply(3, 1)).toEqual(hex(`${OPT_REPLY} 00000003 00000001 00000000`));
  });

  it("option error: bit 31 set, message as data", () => {
    const b = encodeOptionError(42, NBD_REP_ERR_UNSUP, "no");
    expect(b).toEqual(optionReply(42, 0x8000_0001, Buffer.from("no")));
    expect(b).toEqual(hex(`${OPT_REPLY} 0000002a 80000001 00000002 6e6f`));
  });

  it("NBD_REP_SERVER: name length, name, description", () => {
    expect(encodeRepServer(NBD_OPT_LIST, "disk", "a disk")).toEqual(repServer(3, "disk", "a disk"));
    expect(encodeRepServer(3, "", "")).toEqual(
      hex(`${OPT_REPLY} 00000003 00000002 00000004 00000000`),
    );
    expect(encodeRepServer(3, "é", "d")).toEqual(repServer(3, "é", "d"));
  });

  it("NBD_INFO_EXPORT: 64-bit size and 16-bit flags", () => {
    expect(encodeInfoExport(NBD_OPT_GO, 1 << 20, 0x0d6d)).toEqual(infoExport(7, 1 << 20, 0x0d6d));
    expect(encodeInfoExport(6, 2 ** 40 + 5, 1)).toEqual(
      hex(`${OPT_REPLY} 00000006 00000003 0000000c 0000 0000010000000005 0001`),
    );
    expect(encodeInfoExport(7, Number.MAX_SAFE_INTEGER, 0xffff)).toEqual(
      infoExport(7, Number.MAX_SAFE_INTEGER, 0xffff),
    );
  });

  it("NBD_INFO_NAME and NBD_INFO_DESCRIPTION", () => {
    expect(encodeInfoName(NBD_OPT_INFO, "disk")).toEqual(infoName(6, "disk"));
    expect(encodeInfoDescription(NBD_OPT_GO, "ünïcode")).toEqual(infoDescription(7, "ünïcode"));
    expect(encodeInfoString(7, NBD_INFO_NAME, "")).toEqual(
      hex(`${OPT_REPLY} 00000007 00000003 00000002 0001`),
    );
    expect(encodeInfoString(7, NBD_INFO_DESCRIPTION, "x")).toEqual(infoDescription(7, "x"));
  });

  it("NBD_INFO_BLOCK_SIZE: minimum, preferred, maximum", () => {
    const b = encodeInfoBlockSize(7, { minimum: 1, preferred: 4096, maximum: 32 << 20 });
    expect(b).toEqual(infoBlockSize(7, 1, 4096, 32 << 20));
    expect(b).toEqual(
      hex(`${OPT_REPLY} 00000007 00000003 0000000e 0003 00000001 00001000 02000000`),
    );
  });

  it("NBD_REP_META_CONTEXT: id and name", () => {
    expect(encodeMetaContext(NBD_OPT_SET_META_CONTEXT, 1, "base:allocation")).toEqual(
      metaContextReply(10, 1, "base:allocation"),
    );
    expect(encodeMetaContext(9, 0xffff_ffff, "a")).toEqual(
      hex(`${OPT_REPLY} 00000009 00000004 00000005 ffffffff 61`),
    );
  });

  it("EXPORT_NAME reply: size, flags, and 124 zero bytes unless NO_ZEROES", () => {
    const withZeroes = encodeExportNameReply(1 << 30, 0x0d6d, false);
    expect(withZeroes).toHaveLength(134);
    expect(withZeroes).toEqual(exportNameReply(1 << 30, 0x0d6d, true));
    const bare = encodeExportNameReply(2 ** 50, 3, true);
    expect(bare).toEqual(hex("0004000000000000 0003"));
    expect(bare).toEqual(exportNameReply(2 ** 50, 3, false));
  });
});

describe("transmission encoders", () => {
  const cookie = 0x0102030405060708n;
  const { hi, lo } = cookieHalves(cookie);

  it("simple reply: magic, error, cookie", () => {
    expect(encodeSimpleReply(0, hi, lo)).toEqual(simpleReply(0, cookie));
    expect(encodeSimpleReply(NBD_EINVAL, hi, lo)).toEqual(
      hex("67446698 00000016 0102030405060708"),
    );
  });

  it("read reply, simple: 16-byte header then room for the data", () => {
    expect(readReplyOverhead(false)).toBe(16);
    const data = Buffer.from("0123456789");
    const b = allocReadReply(false, hi, lo, 4096, data.length);
    expect(b).toHaveLength(16 + 10);
    data.copy(b, readReplyOverhead(false));
    expect(b).toEqual(simpleReply(0, cookie, data));
  });

  it("read reply, structured: OFFSET_DATA chunk with DONE, offset, then the data", () => {
    expect(readReplyOverhead(true)).toBe(28);
    const data = Buffer.from("abcdef");
    const b = allocReadReply(true, hi, lo, 2 ** 40 + 3, data.length);
    expect(b).toHaveLength(28 + 6);
    data.copy(b, readReplyOverhead(true));
    expect(b).toEqual(offsetDataChunk(cookie, 2 ** 40 + 3, data));
    expect(b.subarray(0, 28)).toEqual(
      hex("668e33ef 0001 0001 0102030405060708 0000000e 0000010000000003"),
    );
  });

  fcTest.prop([
    fc.boolean(),
    fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    fc.nat({ max: Number.MAX_SAFE_INTEGER }),
    fc.uint8Array({ maxLength: 300 }),
  ])("read reply headers for any cookie, offset and length", (structured, ck, offset, bytes) => {
    const data = Buffer.from(bytes);
    const { hi: h, lo: l } = cookieHalves(ck);
    const b = allocReadReply(structured, h, l, offset, data.length);
    data.copy(b, readReplyOverhead(structured));
    expect(b).toEqual(structured ? offsetDataChunk(ck, offset, data) : simpleReply(0, ck, data));
  });

  it("structured error: error, message length, message", () => {
    const b = encodeStructuredError(NBD_EIO, hi, lo, "disk on fire");
    expect(b).toEqual(structuredErrorChunk(cookie, 5, "disk on fire"));
    expect(encodeStructuredError(NBD_EINVAL, hi, lo, "")).toEqual(
      hex("668e33ef 0001 8001 0102030405060708 00000006 00000016 0000"),
    );
    expect(encodeStructuredError(5, hi, lo, "é")).toEqual(structuredErrorChunk(cookie, 5, "é"));
  });

  it("structured error: the message stays within the 4096-byte string limit", () => {
    const b = encodeStructuredError(NBD_EIO, hi, lo, "€".repeat(5000));
    const messageLength = b.readUInt16BE(24);
    expect(messageLength).toBeLessThanOrEqual(4096);
    expect(b.readUInt32BE(16)).toBe(6 + messageLength);
    expect(b).toHaveLength(26 + messageLength);
    // Whatever is kept is valid UTF-8.
    expect(() => new TextDecoder("utf-8", { fatal: true }).decode(b.subarray(26))).not.toThrow();
  });

  it("block status: context id, then length/flags pairs", () => {
    const extents = [
      { length: 65536, flags: 0 },
      { length: 4096, flags: NBD_STATE_HOLE | NBD_STATE_ZERO },
    ];
    const b = encodeBlockStatus(hi, lo, 1, extents);
    expect(b).toEqual(blockStatusChunk(cookie, 1, extents));
    expect(b).toEqual(
      hex(
        "668e33ef 0001 0005 0102030405060708 00000014 00000001 00010000 00000000 00001000 00000003",
      ),
    );
    expect(encodeBlockStatus(hi, lo, 7, [])).toEqual(blockStatusChunk(cookie, 7, []));
  });
});
