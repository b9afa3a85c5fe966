// Input read into buffers the server chooses (nbd/server/socket-input.ts,
// readInto in nbd/read-into.ts), on TLS and plain sockets: the reused input
// buffer never shows through in what the parser keeps, large payloads land in
// pieces that are reused only once their request is done, and Node still has
// what readInto relies on.
import { once } from "node:events";
import { randomBytes } from "node:crypto";
import { PassThrough, type Duplex } from "node:stream";
import net from "node:net";
import tls from "node:tls";
import { afterEach, describe, expect, it } from "vitest";
import { NBD_CMD_WRITE, NBD_CMD_FLUSH } from "../../nbd/constants.js";
import {
  ServerParser,
  type NbdRequest,
  type ServerParserSink,
} from "../../nbd/codec/server-parser.js";
import type { NbdProtocolError } from "../../nbd/errors.js";
import { PIECE_SIZE, SocketInput } from "../../nbd/server/socket-input.js";
import { readInto, type ReadTarget } from "../../nbd/read-into.js";
import { PSK_CIPHERS } from "../../nbd/tls.js";
import { request } from "../helpers/nbd-fixtures.js";

class Sink implements ServerParserSink {
  readonly requests: NbdRequest[] = [];
  readonly errors: NbdProtocolError[] = [];
  onClientFlags(): void {}
  onOption(): void {}
  onOversizedOption(): void {}
  onRequest(r: NbdRequest): void {
    this.requests.push(r);
  }
  onProtocolError(e: NbdProtocolError): void {
    this.errors.push(e);
  }
}

function transmission(): { parser: ServerParser; sink: Sink } {
  const sink = new Sink();
  const parser = new ServerParser(sink);
  parser.gatherPayloads = true;
  parser.enterTransmission();
  return { parser, sink };
}

function payloadOf(r: NbdRequest): Buffer {
  return r.parts === null ? (r.payload as Buffer) : Buffer.concat(r.parts);
}

/** Deliver `bytes` the way Node's TLS layer does: records of `record` bytes, each copied into next(). */
function feed(target: ReadTarget, bytes: Buffer, record: number): void {
  for (let at = 0; at < bytes.length; at += record) {
    let rec = bytes.subarray(at, Math.min(at + record, bytes.length));
    while (rec.length > 0) {
      const into = target.next();
      expect(into.length).toBeGreaterThan(0);
      const n = rec.copy(into, 0, 0, Math.min(into.length, rec.length));
      target.got(n);
      rec = rec.subarray(n);
    }
  }
}

const write = (cookie: number, offset: number, payload: Buffer): Buffer =>
  request({ type: NBD_CMD_WRITE, cookie: BigInt(cookie), offset, length: payload.length }, payload);

describe("ServerParser.push with a transient chunk", () => {
  it("keeps copies of payloads, parts and held bytes, not views of the chunk", () => {
    const { parser, sink } = transmission();
    const small = randomBytes(100);
    const spanning = randomBytes(3000);
    const after = request({ type: NBD_CMD_FLUSH, cookie: 9n, offset: 0, length: 0 });
    const wire = Buffer.concat([write(1, 0, small), write(2, 4096, spanning), after]);
    const chunk = Buffer.alloc(1024);
    for (let at = 0; at < wire.length; at += chunk.length) {
      const n = wire.copy(chunk, 0, at, Math.min(at + chunk.length, wire.length));
      if (at === 2048) parser.hold();
      parser.push(chunk.subarray(0, n), true);
      chunk.fill(0xee); // the owner reuses it
    }
    expect(sink.requests.map((r) => Number(r.cookieLo))).toEqual([1, 2]);
    parser.release();
    expect(sink.requests.map((r) => Number(r.cookieLo))).toEqual([1, 2, 9]);
    expect(payloadOf(sink.requests[0] as NbdRequest).equals(small)).toBe(true);
    expect(payloadOf(sink.requests[1] as NbdRequest).equals(spanning)).toBe(true);
  });
});

describe("SocketInput", () => {
  const sizes = [
    1,
    4096,
    16 * 1024,
    64 * 1024 - 1,
    64 * 1024,
    PIECE_SIZE + 1,
    1 << 20,
    3 * (1 << 20) + 5,
  ];

  for (const record of [16 * 1024, 1000, 16 * 1024 + 29, 64 * 1024]) {
    it(`hands out every payload exactly, records of ${record} bytes`, () => {
      const { parser, sink } = transmission();
      const input = new SocketInput(parser);
      const payloads = sizes.map((n) => randomBytes(n));
      const wire = Buffer.concat(payloads.map((p, i) => write(i + 1, i * (4 << 20), p)));
      feed(input, wire, record);
      expect(sink.errors).toEqual([]);
      expect(sink.requests.map((r) => r.length)).toEqual(sizes);
      sink.requests.forEach((r, i) => {
        expect(payloadOf(r).equals(payloads[i] as Buffer), `payload ${i}`).toBe(true);
      });
      // Large payloads come in a few pieces, not a part per record.
      const mib = sink.requests[6] as NbdRequest;
      expect((mib.parts as Buffer[]).length).toBeLessThanOrEqual(6);
    });
  }

  it("reuses a piece only after its request is released", () => {
    const { parser, sink } = transmission();
    const input = new SocketInput(parser);
    const pieces = (r: NbdRequest): Set<ArrayBufferLike> =>
      new Set(
        (r.parts as Buffer[])
          .filter((p) => p.buffer.byteLength === PIECE_SIZE)
          .map((p) => p.buffer),
      );
    const a = randomBytes(1 << 20);
    const b = randomBytes(1 << 20);
    feed(input, write(1, 0, a), 16 * 1024);
    feed(input, write(2, 0, b), 16 * 1024);
    const [ra, rb] = sink.requests as [NbdRequest, NbdRequest];
    expect(pieces(ra).size).toBeGreaterThan(0);
    for (const p of pieces(rb)) expect(pieces(ra).has(p)).toBe(false);
    input.release(ra);
    const c = randomBytes(1 << 20);
    feed(input, write(3, 0, c), 16 * 1024);
    const rc = sink.requests[2] as NbdRequest;
    for (const p of pieces(rc)) {
      expect(pieces(ra).has(p)).toBe(true);
      expect(pieces(rb).has(p)).toBe(false);
    }
    expect(payloadOf(rb).equals(b)).toBe(true);
    expect(payloadOf(rc).equals(c)).toBe(true);
    // Released twice (or a request that holds no piece): nothing is handed out twice.
    input.release(ra);
    input.release(rb);
    feed(input, write(4, 0, randomBytes(1 << 20)), 16 * 1024);
    feed(input, write(5, 0, randomBytes(1 << 20)), 16 * 1024);
    const [r4, r5] = sink.requests.slice(3) as [NbdRequest, NbdRequest];
    for (const p of pieces(r5)) expect(pieces(r4).has(p)).toBe(false);
  });
});

describe("readInto", () => {
  const open: Duplex[] = [];
  afterEach(() => {
    for (const s of open.splice(0)) s.destroy();
  });

  it("reads a real TLS session's plaintext into the target's buffers, in order", async () => {
    const key = randomBytes(32);
    const received: Buffer[] = [];
    const arrived: Buffer[] = [];
    let target!: { buf: Buffer; used: number };
    const session = new Promise<tls.TLSSocket>((resolve) => {
      const server = tls.createServer(
        { ciphers: PSK_CIPHERS, pskCallback: () => key },
        (socket) => {
          server.close();
          resolve(socket);
        },
      );
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as net.AddressInfo;
        const client = tls.connect({
          port,
          host: "127.0.0.1",
          ciphers: PSK_CIPHERS,
          checkServerIdentity: () => undefined,
          pskCallback: () => ({ psk: key, identity: "test" }),
        });
        open.push(client);
        client.once("secureConnect", () => {
          client.write(Buffer.from("early"));
          void send(client);
        });
      });
    });
    const data = randomBytes(3 * (1 << 20));
    async function send(client: tls.TLSSocket): Promise<void> {
      await new Promise((r) => setTimeout(r, 50));
      for (let at = 0; at < data.length;) {
        const n = Math.min(1 + Math.floor(Math.random() * 100_000), data.length - at);
        if (!client.write(data.subarray(at, at + n))) await once(client, "drain");
        at += n;
      }
      client.end();
    }
    const socket = await session;
    open.push(socket);
    // Let "early" arrive before the switch: it must come back first.
    await new Promise((r) => setTimeout(r, 20));
    const ended = once(socket, "end");
    const result = readInto(socket, {
      next() {
        if (target === undefined || target.used === target.buf.length)
          target = { buf: Buffer.alloc(5000 + Math.floor(Math.random() * 20_000)), used: 0 };
        return target.buf.subarray(target.used);
      },
      got(n) {
        received.push(Buffer.from(target.buf.subarray(target.used, target.used + n)));
        target.used += n;
      },
    });
    expect(result).not.toBeNull();
    arrived.push(...(result as Buffer[]));
    socket.pause();
    await new Promise((r) => setTimeout(r, 30));
    socket.resume();
    await ended;
    const all = Buffer.concat([...arrived, ...received]);
    expect(all.subarray(0, 5).toString()).toBe("early");
    expect(all.subarray(5).equals(data)).toBe(true);
  });

  it("switches a flowing plain socket over inside a 'data' event, losing and reordering nothing", async () => {
    const data = randomBytes(5 * (1 << 20) + 17);
    const viaData: Buffer[] = [];
    const arrived: Buffer[] = [];
    const received: Buffer[] = [];
    let sizes = 0;
    let target = Buffer.alloc(0);
    const session = new Promise<net.Socket>((resolve) => {
      const server = net.createServer((socket) => {
        server.close();
        resolve(socket);
      });
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as net.AddressInfo;
        const client = net.connect(port, "127.0.0.1", () => {
          void (async () => {
            for (let at = 0; at < data.length;) {
              const n = Math.min(1 + Math.floor(Math.random() * 300_000), data.length - at);
              if (!client.write(data.subarray(at, at + n))) await once(client, "drain");
              at += n;
            }
            client.end();
          })();
        });
        open.push(client);
      });
    });
    const socket = await session;
    open.push(socket);
    const ended = once(socket, "end");
    const onData = (chunk: Buffer): void => {
      viaData.push(chunk);
      socket.off("data", onData);
      const result = readInto(socket, {
        next() {
          target = Buffer.alloc(1000 + Math.floor(Math.random() * 300_000));
          return target;
        },
        got(n) {
          sizes = Math.max(sizes, n);
          received.push(Buffer.from(target.subarray(0, n)));
        },
      });
      expect(result).not.toBeNull();
      arrived.push(...(result as Buffer[]));
      socket.pause();
      setTimeout(() => socket.resume(), 30);
    };
    socket.on("data", onData);
    await ended;
    expect(viaData).toHaveLength(1);
    const all = Buffer.concat([...viaData, ...arrived, ...received]);
    expect(all.length).toBe(data.length);
    expect(all.equals(data)).toBe(true);
    // Reads fill the target's buffers, beyond the 64 KiB a 'data' read takes.
    expect(sizes).toBeGreaterThan(64 * 1024);
  });

  it("leaves a stream without Node's user-buffer state alone", () => {
    const stream = new PassThrough();
    const target: ReadTarget = { next: () => Buffer.alloc(1), got: () => undefined };
    expect(readInto(stream as unknown as net.Socket, target)).toBeNull();
  });
});
