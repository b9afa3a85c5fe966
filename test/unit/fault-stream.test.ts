// The link emulator's stream, with a stand-in socket: requests fed one byte
// at a time reach the socket unchanged except the write chosen to fail, whose
// header and payload are taken out; its NBD_EIO simple reply reaches the
// client between whole replies, never inside a read's payload.
import { Duplex } from "node:stream";
import { describe, expect, it } from "vitest";
import { EmulatedStream } from "../../src/faults/stream.js";

const SHAPE = { latencyMs: 0, jitterMs: 0, bandwidth: 0, frozenUntil: 0 };

class FakeSocket extends Duplex {
  readonly written: Buffer[] = [];
  override _write(chunk: Buffer, _e: BufferEncoding, cb: () => void): void {
    this.written.push(chunk);
    cb();
  }
  override _read(): void {}
}

/** A request header built by hand (spec: "Request message"). */
function request(type: number, cookie: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(0x25609513, 0);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(BigInt(cookie), 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

function simpleReply(cookie: number, error = 0): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(0x67446698, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(BigInt(cookie), 8);
  return b;
}

function setup() {
  const socket = new FakeSocket();
  const stream = new EmulatedStream(socket, {
    shape: () => SHAPE,
    failWrite: (offset) => offset === 4096,
    now: () => 0,
  });
  stream.startTransmission(false);
  const received: Buffer[] = [];
  stream.on("data", (b: Buffer) => received.push(b));
  return { socket, stream, received };
}

async function bytewise(into: Duplex, bytes: Buffer): Promise<void> {
  for (let i = 0; i < bytes.length; i++) into.write(bytes.subarray(i, i + 1));
  await new Promise((r) => setImmediate(r));
}

describe("EmulatedStream", () => {
  it("takes the failed write out of the request stream, byte by byte", async () => {
    const s = setup();
    const kept = Buffer.concat([request(1, 1, 0, 8), Buffer.alloc(8, 0xaa)]);
    const dropped = Buffer.concat([request(1, 2, 4096, 8), Buffer.alloc(8, 0xbb)]);
    const after = Buffer.concat([request(0, 3, 0, 4), request(3, 4, 0, 0)]);
    await bytewise(s.stream, Buffer.concat([kept, dropped, after]));
    expect(Buffer.concat(s.socket.written).equals(Buffer.concat([kept, after]))).toBe(true);
    expect(Buffer.concat(s.received).equals(simpleReply(2, 5))).toBe(true);
  });

  it("puts the injected reply after a read's payload, not inside it", async () => {
    const s = setup();
    s.stream.write(request(0, 7, 0, 4)); // a read of 4 bytes
    await new Promise((r) => setImmediate(r));
    const readReply = Buffer.concat([simpleReply(7), Buffer.from("DATA")]);
    s.socket.push(readReply.subarray(0, 18)); // the header and half the payload
    s.stream.write(Buffer.concat([request(1, 8, 4096, 2), Buffer.alloc(2)]));
    await new Promise((r) => setImmediate(r));
    s.socket.push(readReply.subarray(18));
    s.socket.push(simpleReply(9));
    await new Promise((r) => setImmediate(r));
    const all = Buffer.concat(s.received);
    expect(all.equals(Buffer.concat([readReply, simpleReply(8, 5), simpleReply(9)]))).toBe(true);
  });
});
