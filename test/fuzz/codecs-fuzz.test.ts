// The codecs under generated and mutated input (fast-check, test/fuzz/corpus):
// the server's parser and the client's handshake and reply parsers may refuse
// input only with NbdProtocolError, never with any other exception, and the
// server's parser reads the same messages however the bytes are chunked.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { HandshakeParser } from "../../nbd/codec/client-handshake.js";
import { ReplyParser, type ReplyTarget } from "../../nbd/codec/client-replies.js";
import {
  ServerParser,
  type NbdRequest,
  type ServerParserSink,
} from "../../nbd/codec/server-parser.js";
import { NBD_CMD_BLOCK_STATUS, NBD_CMD_READ, NBD_OPT_GO } from "../../nbd/constants.js";
import { NbdProtocolError } from "../../nbd/errors.js";
import { chunking, loadCorpus, mutate, Rng, sessionArb } from "./harness.js";

const corpus = await loadCorpus();
const RUNS = 300;

/** Either generated sessions or a recorded one mutated with a seed. */
function inputs(side: "c2s" | "s2c"): fc.Arbitrary<Buffer> {
  const recorded = corpus.map((s) => s[side]);
  const mutated = fc
    .tuple(fc.integer({ min: 0, max: recorded.length - 1 }), fc.integer())
    .map(([i, seed]) => mutate(new Rng(seed), recorded[i] as Buffer, recorded));
  return side === "c2s" ? fc.oneof(sessionArb, mutated) : mutated;
}

/** What ServerParser told its sink, as text, entering transmission as the server would. */
function parse(bytes: Buffer, chunks: readonly number[], gather: boolean): string[] {
  const events: string[] = [];
  const sink: ServerParserSink = {
    onClientFlags: (flags) => events.push(`flags ${flags}`),
    onOption: (option, data) => {
      events.push(`option ${option} ${data.toString("hex")}`);
      if (option === NBD_OPT_GO || option === 1) parser.enterTransmission();
    },
    onOversizedOption: (option, length) => events.push(`oversized ${option} ${length}`),
    onRequest: (r: NbdRequest) => {
      const payload = r.parts === null ? r.payload : Buffer.concat(r.parts);
      events.push(
        `request ${r.type} ${r.flags} ${r.cookieHi}:${r.cookieLo} ${r.offset}+${r.length} ${payload?.toString("hex") ?? "-"}`,
      );
    },
    onProtocolError: (e) => {
      expect(e).toBeInstanceOf(NbdProtocolError);
      events.push(`error ${e.message}`);
    },
  };
  const parser = new ServerParser(sink);
  parser.gatherPayloads = gather;
  let at = 0;
  for (const n of chunks) {
    parser.push(bytes.subarray(at, at + n));
    at += n;
  }
  return events;
}

function protocolErrorsOnly(run: () => void): void {
  try {
    run();
  } catch (err) {
    if (!(err instanceof NbdProtocolError)) throw err;
  }
}

describe("codec fuzzing", () => {
  it("ServerParser: same messages however the input is chunked, no exceptions", () => {
    fc.assert(
      fc.property(inputs("c2s"), fc.integer(), fc.boolean(), (bytes, seed, gather) => {
        const whole = parse(bytes, [bytes.length], gather);
        const split = parse(bytes, chunking(new Rng(seed), bytes.length), gather);
        expect(split).toEqual(whole);
      }),
      { numRuns: RUNS },
    );
  });

  it("HandshakeParser and ReplyParser: NbdProtocolError or success, nothing else", () => {
    const target = (command: number, length: number): ReplyTarget => ({
      command,
      flags: 0,
      offset: 0,
      length,
      into: command === NBD_CMD_READ ? Buffer.alloc(length) : undefined,
      errno: 0,
      message: "",
      errorOffset: -1,
      extents: undefined,
      received: 0,
      spans: undefined,
    });
    fc.assert(
      fc.property(inputs("s2c"), fc.integer(), fc.boolean(), (bytes, seed, structured) => {
        const rng = new Rng(seed);
        const hs = new HandshakeParser();
        let rest: Buffer[] = [];
        protocolErrorsOnly(() => {
          let at = 0;
          for (const n of chunking(rng, bytes.length)) {
            hs.push(bytes.subarray(at, at + n));
            at += n;
          }
          if (hs.readGreeting() === undefined) return;
          // Each reply is read for the option its header names, up to GO's last one.
          let pos = 18;
          for (;;) {
            if (bytes.length < pos + 20) return;
            const reply = hs.readOptionReply(bytes.readUInt32BE(pos + 8));
            if (reply === undefined) return;
            pos += 20 + reply.payload.length;
            if (reply.option === NBD_OPT_GO && reply.type === 1) break;
          }
          rest = hs.drain();
        });
        const replies = new ReplyParser(
          {
            lookup: (cookie) =>
              cookie % 3 === 0
                ? target(NBD_CMD_READ, 4096 * (1 + (cookie % 4)))
                : cookie % 3 === 1
                  ? target(NBD_CMD_BLOCK_STATUS, 1 << 20)
                  : target(1, 4096),
            complete: () => undefined,
          },
          {
            structuredReplies: structured,
            metaContextIds: new Set([1, 2]),
            allocationContextId: 1,
          },
        );
        protocolErrorsOnly(() => {
          for (const chunk of rest.length > 0 ? rest : [bytes]) replies.feed(chunk);
        });
      }),
      { numRuns: RUNS },
    );
  });
});
