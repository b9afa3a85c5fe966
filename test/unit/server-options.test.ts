// Decoders for option request data: valid inputs decode, malformed ones give
// null (answered with NBD_REP_ERR_INVALID), and no input makes them throw.
import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import {
  parseExportName,
  parseGoRequest,
  parseMetaContextRequest,
} from "../../nbd/codec/server-options.js";
import { cat, goData, metaContextData, u16, u32, utf8 } from "../helpers/nbd-fixtures.js";

const INVALID_UTF8 = Buffer.from([0xc3, 0x28]);

describe("parseGoRequest", () => {
  it("decodes a name and info requests", () => {
    expect(parseGoRequest(goData("disk", [1, 2, 3]))).toEqual({ name: "disk", infos: [1, 2, 3] });
    expect(parseGoRequest(goData("", []))).toEqual({ name: "", infos: [] });
    expect(parseGoRequest(goData("ünï", [0xffff]))).toEqual({ name: "ünï", infos: [0xffff] });
  });

  it("rejects truncated data", () => {
    const good = goData("disk", [1, 3]);
    for (let n = 0; n < good.length; n++)
      expect(parseGoRequest(good.subarray(0, n)), `${n}`).toBeNull();
  });

  it("rejects a name length beyond the data", () => {
    expect(parseGoRequest(cat(u32(5), utf8("disk"), u16(0)))).toBeNull();
    expect(parseGoRequest(cat(u32(0xffff_ffff), u16(0)))).toBeNull();
  });

  it("rejects an info count larger than the data, and trailing garbage", () => {
    expect(parseGoRequest(cat(u32(1), utf8("a"), u16(2), u16(1)))).toBeNull();
    expect(parseGoRequest(cat(goData("a", [1]), Buffer.from([0])))).toBeNull();
    expect(parseGoRequest(cat(goData("a", [1]), u16(2)))).toBeNull();
  });

  it("rejects a name that is not UTF-8, or longer than 4096 bytes", () => {
    expect(parseGoRequest(goData(INVALID_UTF8, []))).toBeNull();
    expect(parseGoRequest(goData("x".repeat(4096), []))?.name).toHaveLength(4096);
    expect(parseGoRequest(goData("x".repeat(4097), []))).toBeNull();
  });
});

describe("parseMetaContextRequest", () => {
  it("decodes an export name and queries", () => {
    expect(parseMetaContextRequest(metaContextData("disk", ["base:allocation"]))).toEqual({
      name: "disk",
      queries: ["base:allocation"],
    });
    expect(parseMetaContextRequest(metaContextData("", []))).toEqual({ name: "", queries: [] });
    expect(parseMetaContextRequest(metaContextData("e", ["base:", "", "qemu:dirty"]))).toEqual({
      name: "e",
      queries: ["base:", "", "qemu:dirty"],
    });
  });

  it("rejects truncated data", () => {
    const good = metaContextData("disk", ["base:allocation", "x:y"]);
    for (let n = 0; n < good.length; n++)
      expect(parseMetaContextRequest(good.subarray(0, n)), `${n}`).toBeNull();
  });

  it("rejects counts larger than the data and query lengths beyond it", () => {
    expect(parseMetaContextRequest(cat(u32(0), u32(1)))).toBeNull();
    expect(parseMetaContextRequest(cat(u32(0), u32(0xffff_ffff), u32(0)))).toBeNull();
    expect(parseMetaContextRequest(cat(u32(0), u32(1), u32(3), utf8("ab")))).toBeNull();
    expect(parseMetaContextRequest(cat(u32(9), utf8("ab"), u32(0)))).toBeNull();
  });

  it("rejects trailing garbage", () => {
    expect(
      parseMetaContextRequest(cat(metaContextData("a", ["b:c"]), Buffer.from([1]))),
    ).toBeNull();
    expect(parseMetaContextRequest(cat(metaContextData("a", []), u32(0)))).toBeNull();
  });

  it("rejects invalid UTF-8 in the name or a query", () => {
    expect(parseMetaContextRequest(cat(u32(2), INVALID_UTF8, u32(0)))).toBeNull();
    expect(parseMetaContextRequest(cat(u32(0), u32(1), u32(2), INVALID_UTF8))).toBeNull();
  });
});

describe("parseExportName", () => {
  it("takes the whole data as the name", () => {
    expect(parseExportName(utf8("disk"))).toBe("disk");
    expect(parseExportName(Buffer.alloc(0))).toBe("");
    expect(parseExportName(utf8("日本"))).toBe("日本");
  });

  it("rejects invalid UTF-8 and names over 4096 bytes", () => {
    expect(parseExportName(INVALID_UTF8)).toBeNull();
    expect(parseExportName(Buffer.from([0xed, 0xa0, 0x80]))).toBeNull(); // a UTF-16 surrogate
    expect(parseExportName(Buffer.alloc(4097, 0x61))).toBeNull();
  });

  it("keeps a leading U+FEFF: it is part of the name, not a byte-order mark", () => {
    // A decoder that strips a byte-order mark would serve export "disk" to a
    // client that asked for "\uFEFFdisk": names are compared byte for byte.
    expect(parseExportName(utf8("\uFEFFdisk"))).toBe("\uFEFFdisk");
    expect(parseGoRequest(goData("\uFEFFdisk", []))?.name).toBe("\uFEFFdisk");
    expect(parseMetaContextRequest(metaContextData("\uFEFFe", []))?.name).toBe("\uFEFFe");
  });
});

describe("properties", () => {
  fcTest.prop([fc.uint8Array({ maxLength: 200 })])("arbitrary bytes never throw", (bytes) => {
    const b = Buffer.from(bytes);
    expect(() => parseGoRequest(b)).not.toThrow();
    expect(() => parseMetaContextRequest(b)).not.toThrow();
    expect(() => parseExportName(b)).not.toThrow();
  });

  // Mostly-valid data with one field perturbed reaches the deeper checks.
  fcTest.prop([
    fc.string({ maxLength: 20 }),
    fc.array(fc.string({ maxLength: 20 }), { maxLength: 4 }),
    fc.nat(),
    fc.integer({ min: 0, max: 255 }),
  ])("perturbed meta context data never throws", (name, queries, at, byte) => {
    const b = metaContextData(name, queries);
    b[at % b.length] = byte;
    expect(() => parseMetaContextRequest(b)).not.toThrow();
  });

  fcTest.prop([
    fc.string({ unit: "grapheme", maxLength: 40 }),
    fc.array(fc.nat({ max: 0xffff }), { maxLength: 10 }),
  ])("GO data round-trips", (name, infos) => {
    expect(parseGoRequest(goData(name, infos))).toEqual({ name, infos });
  });

  fcTest.prop([
    fc.string({ unit: "grapheme", maxLength: 40 }),
    fc.array(fc.string({ unit: "grapheme", maxLength: 30 }), { maxLength: 5 }),
  ])("meta context data round-trips", (name, queries) => {
    expect(parseMetaContextRequest(metaContextData(name, queries))).toEqual({ name, queries });
  });
});
