import { describe, expect, it } from "vitest";
import {
  MAX_EFFECT_LENGTH,
  capabilitiesFrom,
  checkFlags,
  checkRange,
  maxPayloadPiece,
} from "../../nbd/client/limits.js";
import { NbdRequestError } from "../../nbd/errors.js";

const WRITE = 1;

function rangeError(offset: number, length: number, size = 1 << 20, minimum = 512): string {
  try {
    checkRange(WRITE, offset, length, size, minimum);
  } catch (err) {
    expect(err).toBeInstanceOf(NbdRequestError);
    expect((err as NbdRequestError).code).toBe("EINVAL");
    return (err as Error).message;
  }
  return "accepted";
}

describe("checkRange", () => {
  it.each([
    [0, 0, "accepted"],
    [512, 1024, "accepted"],
    [(1 << 20) - 512, 512, "accepted"],
    [100, 512, /not aligned to the server's minimum block size 512/],
    [512, 100, /not aligned/],
    [(1 << 20) - 512, 1024, /goes past the end of the export \(1048576 bytes\)/],
    [-512, 512, /bad offset -512/],
    [0.5, 512, /bad offset/],
    [0, Number.MAX_SAFE_INTEGER + 1, /bad offset 0 or length/],
  ])("NBD_CMD_WRITE at %s length %s: %s", (offset, length, expected) => {
    const message = rangeError(offset, length);
    if (typeof expected === "string") expect(message).toBe(expected);
    else expect(message).toMatch(expected);
  });

  it("allows an unaligned tail that ends exactly at the end of the export", () => {
    expect(rangeError(1024, 100, 1124)).toBe("accepted");
  });
});

describe("checkFlags", () => {
  it("accepts documented flags and rejects the rest", () => {
    expect(() => checkFlags(WRITE, 1, 1)).not.toThrow();
    expect(() => checkFlags(WRITE, 2, 1)).toThrow(/NBD_CMD_WRITE: command flags 0x2/);
    expect(() => checkFlags(WRITE, -1, 0xffff)).toThrow(NbdRequestError);
    expect(() => checkFlags(WRITE, 1.5, 0xffff)).toThrow(NbdRequestError);
  });
});

describe("maxPayloadPiece", () => {
  it.each([
    [undefined, 32 * 1024 * 1024],
    [{ minimum: 1, preferred: 4096, maximum: 0xffffffff }, 32 * 1024 * 1024],
    [{ minimum: 512, preferred: 4096, maximum: 65536 }, 65536],
    [{ minimum: 512, preferred: 4096, maximum: 100_000 }, 98304],
    [{ minimum: 512, preferred: 65536, maximum: 4096 }, 4096],
    [{ minimum: 4096, preferred: 4096, maximum: 4096 }, 4096],
  ])("%j → %i", (sizes, piece) => {
    expect(maxPayloadPiece(sizes)).toBe(piece);
  });

  it("splits effect-only commands at a multiple of every legal block size", () => {
    expect(MAX_EFFECT_LENGTH % 65536).toBe(0);
    expect(MAX_EFFECT_LENGTH).toBeLessThan(2 ** 32);
  });
});

describe("capabilitiesFrom", () => {
  it("reads the transmission flags", () => {
    expect(capabilitiesFrom(0x0d6f, true)).toEqual({
      readOnly: true,
      flush: true,
      fua: true,
      trim: true,
      zero: true,
      fastZero: true,
      cache: true,
      blockStatus: true,
      multiConn: true,
    });
    expect(capabilitiesFrom(1 | 4, false)).toMatchObject({ flush: true, fua: false, zero: false });
  });

  it("ignores every bit when NBD_FLAG_HAS_FLAGS is clear", () => {
    expect(Object.values(capabilitiesFrom(0xfffe, false)).some(Boolean)).toBe(false);
  });

  it("never reports fast zero without write zeroes", () => {
    expect(capabilitiesFrom(1 | (1 << 11), false).fastZero).toBe(false);
  });
});
