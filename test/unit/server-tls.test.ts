// NBD_OPT_STARTTLS on the server (spec "TLS support", FORCEDTLS mode): the
// test plays the client with hand-built option bytes over a loopback socket,
// upgrades it with node:tls after NBD_REP_ACK and goes on under TLS.
import { once } from "node:events";
import { writeFile } from "node:fs/promises";
import { mkdtemp } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import type { Duplex } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
} from "../../nbd/constants.js";
import { randomBytes } from "node:crypto";
import { connectUri } from "../../nbd/client/index.js";
import { NbdServer } from "../../nbd/server/server.js";
import type { Backend } from "../../src/backend/types.js";
import { FileBackend } from "../../src/backend/file.js";
import { loadServerTls, parsePskFile, PSK_CIPHERS, type TlsMode } from "../../nbd/tls.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import {
  clientFlags,
  goData,
  optionReplyHeader,
  optionRequest,
  utf8,
} from "../helpers/nbd-fixtures.js";

const KEY = Buffer.from("0123456789abcdef0123456789abcdef", "hex");
let pskFile: string;
const servers: NbdServer[] = [];

beforeAll(async () => {
  const dir = await mkdtemp(join(tmpdir(), "peercopy-tls-unit-"));
  pskFile = join(dir, "keys.psk");
  await writeFile(pskFile, `alice:${KEY.toString("hex")}\nbob:${"ab".repeat(16)}\n`);
});

afterAll(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

/** A byte reader over a socket that can be swapped for its TLS upgrade. */
class Reader {
  private buf = Buffer.alloc(0);
  private ended = false;
  private wake: (() => void) | undefined;
  constructor(public stream: Duplex) {
    this.listen(stream);
  }
  listen(stream: Duplex): void {
    this.stream = stream;
    stream.on("data", (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      this.wake?.();
    });
    stream.on("close", () => {
      this.ended = true;
      this.wake?.();
    });
    stream.on("error", () => undefined);
  }
  async take(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`connection closed with ${this.buf.length} of ${n} bytes`);
      await new Promise<void>((r) => (this.wake = r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  async closed(): Promise<boolean> {
    for (let i = 0; i < 100 && !this.ended; i++) await new Promise((r) => setTimeout(r, 20));
    return this.ended;
  }
}

async function start(
  mode: TlsMode,
  authorize?: (peer: unknown) => string | undefined,
): Promise<number> {
  const server = new NbdServer({
    exports: [{ name: "disk", description: "", volume: new MemoryBackend(1 << 20), authorize }],
    tls: mode === "off" ? undefined : await loadServerTls({ mode, psk: pskFile }),
  });
  servers.push(server);
  const l = await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 });
  return l.endpoint.kind === "tcp" ? l.endpoint.port : 0;
}

async function open(port: number): Promise<Reader> {
  const socket = net.connect(port, "127.0.0.1");
  await once(socket, "connect");
  const r = new Reader(socket);
  await r.take(18);
  socket.write(clientFlags(3));
  return r;
}

async function option(
  r: Reader,
  opt: number,
  data?: Buffer,
): Promise<{ type: number; text: string }> {
  r.stream.write(optionRequest(opt, data));
  const h = optionReplyHeader(await r.take(20));
  expect(h.option).toBe(opt);
  return { type: h.type, text: (await r.take(h.length)).toString("utf8") };
}

async function upgrade(r: Reader, identity = "alice", key = KEY): Promise<tls.TLSSocket> {
  const raw = r.stream;
  raw.removeAllListeners("data");
  const socket = tls.connect({
    socket: raw,
    ciphers: PSK_CIPHERS,
    checkServerIdentity: () => undefined,
    pskCallback: () => ({ psk: key, identity }),
  });
  r.listen(socket);
  await once(socket, "secureConnect");
  return socket;
}

describe("NBD_OPT_STARTTLS", () => {
  it("with --tls require, refuses every option but STARTTLS and ABORT with NBD_REP_ERR_TLS_REQD", async () => {
    const r = await open(await start("require"));
    for (const [opt, data] of [
      [NBD_OPT_LIST, undefined],
      [NBD_OPT_STRUCTURED_REPLY, undefined],
      [NBD_OPT_INFO, goData("disk", [])],
      [NBD_OPT_GO, goData("disk", [])],
      [999, undefined],
    ] as const) {
      const reply = await option(r, opt, data);
      expect(reply.type).toBe(NBD_REP_ERR_TLS_REQD);
      expect(reply.text).toMatch(/requires TLS/);
    }
    expect((await option(r, NBD_OPT_ABORT)).type).toBe(NBD_REP_ACK);
    expect(await r.closed()).toBe(true);
  });

  it("ends the session for NBD_OPT_EXPORT_NAME before TLS", async () => {
    const r = await open(await start("require"));
    r.stream.write(optionRequest(NBD_OPT_EXPORT_NAME, utf8("disk")));
    expect(await r.closed()).toBe(true);
  });

  it("upgrades, forgets options from before, and refuses a second STARTTLS", async () => {
    const r = await open(await start("on"));
    expect((await option(r, NBD_OPT_STRUCTURED_REPLY)).type).toBe(NBD_REP_ACK);
    expect((await option(r, NBD_OPT_STARTTLS, Buffer.from([1]))).type).toBe(NBD_REP_ERR_INVALID);
    expect((await option(r, NBD_OPT_STARTTLS)).type).toBe(NBD_REP_ACK);
    const socket = await upgrade(r);
    expect(socket.getProtocol()).toBe("TLSv1.3");
    expect((await option(r, NBD_OPT_STARTTLS)).type).toBe(NBD_REP_ERR_INVALID);
    // STRUCTURED_REPLY from before TLS is gone: GO answers with simple replies only.
    expect((await option(r, NBD_OPT_GO, goData("disk", []))).type).toBe(NBD_REP_INFO);
    const ack = optionReplyHeader(await r.take(20));
    expect(ack.type).toBe(NBD_REP_ACK);
    socket.destroy();
  });

  it("without TLS configured, answers STARTTLS with NBD_REP_ERR_UNSUP", async () => {
    const r = await open(await start("off"));
    expect((await option(r, NBD_OPT_STARTTLS)).type).toBe(NBD_REP_ERR_UNSUP);
    expect((await option(r, NBD_OPT_LIST)).type).not.toBe(NBD_REP_ERR_TLS_REQD);
  });

  it("refuses an export its authorize hook rejects with NBD_REP_ERR_POLICY", async () => {
    const r = await open(
      await start("require", (peer) =>
        (peer as { identity?: string } | null)?.identity === "alice" ? undefined : "not trusted",
      ),
    );
    expect((await option(r, NBD_OPT_STARTTLS)).type).toBe(NBD_REP_ACK);
    await upgrade(r, "bob", Buffer.from("ab".repeat(16), "hex"));
    const reply = await option(r, NBD_OPT_GO, goData("disk", []));
    expect(reply).toEqual({ type: NBD_REP_ERR_POLICY, text: "not trusted" });
  });

  it("closes the connection on a wrong key", async () => {
    const r = await open(await start("require"));
    expect((await option(r, NBD_OPT_STARTTLS)).type).toBe(NBD_REP_ACK);
    await expect(upgrade(r, "alice", Buffer.alloc(16, 9))).rejects.toThrow();
    expect(await r.closed()).toBe(true);
  });
});

describe("transmission over TLS", () => {
  const SIZE = 64 << 20;
  // Sizes around where the server's TLS input switches from its reused buffer
  // to payload pieces (64 KiB still to come, 256 KiB pieces), and the limit.
  const lengths = [
    1,
    512,
    4096,
    65_535,
    65_536,
    65_537,
    262_145,
    1 << 20,
    3 * (1 << 20) + 7,
    32 << 20,
  ];

  for (const [name, make] of [
    [
      "a file (one pwritev per payload)",
      async (dir: string) => FileBackend.open(join(dir, "disk.img"), { createSize: SIZE }),
    ],
    ["memory", () => Promise.resolve(new MemoryBackend(SIZE))],
  ] as const) {
    it(`writes of every size reach ${name} exactly, many in flight, with reading paused between`, async () => {
      const volume: Backend = await make(await mkdtemp(join(tmpdir(), "peercopy-tls-write-")));
      const server = new NbdServer({
        exports: [{ name: "disk", description: "", volume }],
        tls: await loadServerTls({ mode: "require", psk: pskFile }),
        // Two requests at a time: the server stops reading while the client keeps sending.
        limits: { maxInFlight: 2 },
      });
      servers.push(server);
      const l = await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 });
      const port = l.endpoint.kind === "tcp" ? l.endpoint.port : 0;
      const client = await connectUri(
        `nbds://alice@127.0.0.1:${port}/disk?tls-psk-file=${pskFile}`,
      );
      try {
        for (let round = 0; round < 2; round++) {
          let at = 0;
          const writes = lengths.map((n) => {
            const w = { offset: at, data: randomBytes(n) };
            at += Math.ceil(n / 4096) * 4096;
            return w;
          });
          await Promise.all(writes.map((w) => client.write(w.data, w.offset)));
          for (const w of writes) {
            const back = Buffer.alloc(w.data.length);
            await client.read(back, w.offset);
            expect(back.equals(w.data), `${w.data.length} bytes at ${w.offset}`).toBe(true);
          }
        }
      } finally {
        await client.close();
      }
    });
  }
});

describe("psktool files", () => {
  it("reads identity:hexkey lines", () => {
    const keys = parsePskFile("alice:00ff\n\nbob:0a0b0c\n", "k.psk");
    expect([...keys.keys()]).toEqual(["alice", "bob"]);
    expect(keys.get("bob")).toEqual(Buffer.from([10, 11, 12]));
  });

  it.each([
    ["alice\n", /line 1: expected "identity:hexkey"/],
    ["alice:xyz\n", /line 1: the key of "alice" is not hexadecimal/],
    ["a:00\na:01\n", /line 2: "a" is given twice/],
    ["\n\n", /holds no "identity:hexkey" line/],
  ])("rejects %j", (text, message) => {
    expect(() => parsePskFile(text, "k.psk")).toThrow(message);
  });
});
