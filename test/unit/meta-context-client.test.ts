// The client's side of several metadata contexts: the reply parser keeps one
// NBD_REPLY_TYPE_BLOCK_STATUS chunk per negotiated context ("NBD_CMD_BLOCK_STATUS"),
// and NbdClient.blockStatusOf() reads them. Replies are built by hand and fed
// whole and split at every offset.
import { describe, expect, it } from "vitest";
import {
  ReplyParser,
  type ReplyHandler,
  type ReplyTarget,
} from "../../nbd/codec/client-replies.js";
import { metaContextQueries } from "../../nbd/client/handshake.js";
import { NbdProtocolError } from "../../nbd/errors.js";
import type { Extent } from "../../nbd/export.js";
import { cat, structuredChunk, u32 } from "../helpers/nbd-fixtures.js";

const BLOCK_STATUS = 7;
const REQ_ONE = 1 << 3;
const T_BLOCK_STATUS = 5;
const ALLOCATION = 1;
const DIRTY = 7;

const status = (done: boolean, cookie: number, id: number, extents: number[][]): Buffer =>
  structuredChunk(
    done ? 1 : 0,
    T_BLOCK_STATUS,
    BigInt(cookie),
    cat(u32(id), ...extents.map(([length, flags]) => cat(u32(length ?? 0), u32(flags ?? 0)))),
  );

function target(length: number, flags = 0): ReplyTarget {
  return {
    command: BLOCK_STATUS,
    flags,
    offset: 0,
    length,
    into: undefined,
    errno: 0,
    message: "",
    errorOffset: -1,
    extents: undefined,
    received: 0,
    spans: undefined,
  };
}

/** Feed `parts` to a parser over one fresh request with cookie 1; return it once complete. */
function parse(parts: readonly Buffer[], request: ReplyTarget, ids = [ALLOCATION, DIRTY]) {
  let done: ReplyTarget | undefined;
  const handler: ReplyHandler = {
    lookup: (cookie) => (cookie === 1 && done === undefined ? request : undefined),
    complete: (_cookie, t) => {
      done = t;
    },
  };
  const parser = new ReplyParser(handler, {
    structuredReplies: true,
    metaContextIds: new Set(ids),
    allocationContextId: ids.includes(ALLOCATION) ? ALLOCATION : undefined,
  });
  for (const part of parts) parser.feed(part);
  return done;
}

/** The same stream fed whole, then split at every offset: every result must agree. */
function parseEverySplit(stream: Buffer, make: () => ReplyTarget, ids?: number[]) {
  const results = [parse([stream], make(), ids)];
  for (let at = 1; at < stream.length; at++) {
    results.push(parse([stream.subarray(0, at), stream.subarray(at)], make(), ids));
  }
  for (const r of results) expect(r).toEqual(results[0]);
  return results[0];
}

function protocolError(stream: Buffer, request: ReplyTarget, ids?: number[]): string {
  try {
    parse([stream], request, ids);
  } catch (err) {
    expect(err).toBeInstanceOf(NbdProtocolError);
    return (err as Error).message;
  }
  throw new Error("expected a protocol error");
}

const allocation: Extent[] = [
  { length: 4096, flags: 3 },
  { length: 4096, flags: 0 },
];
const dirty: Extent[] = [{ length: 8192, flags: 1 }];

describe("ReplyParser with two metadata contexts", () => {
  it.each([
    ["allocation first", [ALLOCATION, DIRTY]],
    ["dirty first", [DIRTY, ALLOCATION]],
  ])("keeps both chunks by context id (%s)", (_name, order) => {
    const chunks = order.map((id, i) =>
      status(
        i === order.length - 1,
        1,
        id,
        id === ALLOCATION ? allocation.map((e) => [e.length, e.flags]) : [[8192, 1]],
      ),
    );
    const done = parseEverySplit(cat(...chunks), () => target(8192));
    expect(done?.errno).toBe(0);
    expect(done?.extents).toEqual(allocation);
    expect(done?.contextExtents).toEqual(
      new Map([
        [ALLOCATION, allocation],
        [DIRTY, dirty],
      ]),
    );
  });

  it("a context alone, without base:allocation", () => {
    const done = parseEverySplit(status(true, 1, DIRTY, [[512, 1]]), () => target(8192), [DIRTY]);
    expect(done?.extents).toBeUndefined();
    expect(done?.contextExtents?.get(DIRTY)).toEqual([{ length: 512, flags: 1 }]);
  });

  it("REQ_ONE applies to each chunk", () => {
    const stream = cat(status(false, 1, DIRTY, [[8, 1]]), status(true, 1, ALLOCATION, [[8, 0]]));
    expect(parse([stream], target(8, REQ_ONE))?.contextExtents?.size).toBe(2);
    const two = cat(
      status(false, 1, ALLOCATION, [[8, 0]]),
      status(true, 1, DIRTY, [
        [4, 1],
        [4, 0],
      ]),
    );
    expect(protocolError(two, target(8, REQ_ONE))).toMatch(/REQ_ONE/);
  });

  it("refuses a chunk for an id never negotiated", () => {
    const stream = cat(status(false, 1, ALLOCATION, [[8, 0]]), status(true, 1, 9, [[8, 0]]));
    expect(protocolError(stream, target(8))).toMatch(/context 9, never negotiated/);
  });

  it("refuses two chunks for one context", () => {
    const stream = cat(
      status(false, 1, DIRTY, [[8, 1]]),
      status(false, 1, ALLOCATION, [[8, 0]]),
      status(true, 1, DIRTY, [[8, 0]]),
    );
    expect(protocolError(stream, target(8))).toMatch(
      /two NBD_REPLY_TYPE_BLOCK_STATUS chunks for metadata context 7/,
    );
  });

  it("refuses a successful reply missing a negotiated context's chunk", () => {
    const stream = status(true, 1, ALLOCATION, [[8, 0]]);
    expect(protocolError(stream, target(8))).toMatch(/without extents for metadata context 7/);
    const onlyDirty = status(true, 1, DIRTY, [[8, 0]]);
    expect(protocolError(onlyDirty, target(8))).toMatch(/without base:allocation/);
  });
});

describe("metaContextQueries", () => {
  it("asks for base:allocation and each extra context once", () => {
    const names = ["qemu:dirty-bitmap:b0", "base:allocation", "qemu:dirty-bitmap:b0"];
    expect(metaContextQueries({ exportName: "", metaContexts: names })).toEqual([
      "base:allocation",
      "qemu:dirty-bitmap:b0",
    ]);
    expect(metaContextQueries({ exportName: "", blockStatus: false })).toEqual([]);
  });

  it("rejects a name without a namespace at once", () => {
    expect(() => metaContextQueries({ exportName: "", metaContexts: ["dirty"] })).toThrow(
      /namespace:leaf-name/,
    );
  });
});
