// NBD_OPT_STARTTLS against real peers: libnbd (nbdinfo, nbdcopy) and qemu-img
// as clients of peercopy's server; nbdkit and qemu-nbd as servers for
// peercopy's client. X.509 and PSK credentials come from certtool and psktool.
// Every refusal (wrong key, wrong CA, expired certificate, plain client against
// --tls require) is checked on both sides, and that no data moved.
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NbdClient, connectUri } from "../../nbd/client/index.js";
import { NbdServer } from "../../nbd/server/server.js";
import { loadServerTls, type ServerTlsSpec, type TlsPeer } from "../../nbd/tls.js";
import type { Logger } from "../../nbd/logger.js";
import { formatEndpoint } from "../../nbd/transport.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import {
  makeTempDir,
  requirePeer,
  startNbdkit,
  startQemuNbd,
  stopPeers,
} from "../helpers/peers.js";
import { makePki, type Pki } from "../helpers/pki.js";
import { describeRun, requireTools, run, type RunResult } from "../helpers/tools.js";

const SIZE = 4 * 1024 * 1024;
const ready =
  requireTools("certtool", "psktool", "nbdinfo", "nbdcopy", "qemu-img") &&
  requirePeer("nbdkit") &&
  requirePeer("qemu-nbd");

interface Served {
  readonly server: NbdServer;
  readonly volume: MemoryBackend;
  readonly port: number;
  readonly warnings: string[];
  readonly peers: (TlsPeer | null)[];
}

function capture(warnings: string[]): Logger {
  const ignore = (): void => undefined;
  return {
    debug: ignore,
    info: ignore,
    error: ignore,
    warn: (obj: object | string, msg?: string) => {
      warnings.push(typeof obj === "string" ? obj : `${msg ?? ""} ${JSON.stringify(obj)}`);
    },
  };
}

let pki: Pki;
const running: NbdServer[] = [];

async function serve(spec: ServerTlsSpec): Promise<Served> {
  const warnings: string[] = [];
  const peers: (TlsPeer | null)[] = [];
  const volume = new MemoryBackend(SIZE);
  const server = new NbdServer({
    exports: [
      {
        name: "",
        description: "tls test",
        volume,
        authorize: (peer) => {
          peers.push(peer);
          return undefined;
        },
      },
    ],
    logger: capture(warnings),
    tls: await loadServerTls(spec),
  });
  running.push(server);
  const listener = await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 });
  const port = listener.endpoint.kind === "tcp" ? listener.endpoint.port : 0;
  return { server, volume, port, warnings, peers };
}

async function untouched(volume: MemoryBackend): Promise<boolean> {
  const back = Buffer.alloc(SIZE, 1);
  await volume.read(back, 0);
  return back.every((b) => b === 0);
}

/** Eventually true: the server logs a refused handshake just after the client gives up. */
async function logged(warnings: string[], pattern: RegExp): Promise<string> {
  for (let i = 0; i < 100; i++) {
    const hit = warnings.find((w) => pattern.test(w));
    if (hit !== undefined) return hit;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return `no warning matching ${pattern} in:\n${warnings.join("\n")}`;
}

function failed(result: RunResult): void {
  expect(result.timedOut, describeRun(result)).toBe(false);
  expect(result.exitCode, describeRun(result)).not.toBe(0);
}

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected a rejection");
}

describe.skipIf(!ready)("TLS interop", () => {
  let source: string;
  const data = randomBytes(SIZE);

  beforeAll(async () => {
    const dir = await makeTempDir("peercopy-tls-");
    pki = await makePki(dir);
    source = join(dir, "source.img");
    const { writeFile } = await import("node:fs/promises");
    await writeFile(source, data);
  }, 60_000);

  afterAll(async () => {
    await Promise.all(running.splice(0).map((s) => s.close()));
    await stopPeers();
  });

  describe("peercopy serves, libnbd and qemu connect", () => {
    it("nbdinfo with tls-certificates= gets TLS 1.3 and the client's CN is known", async () => {
      const s = await serve({ mode: "require", certificates: pki.good, verifyPeer: true });
      const r = await run("nbdinfo", [`nbds://127.0.0.1:${s.port}/?tls-certificates=${pki.good}`]);
      expect(r.exitCode, describeRun(r)).toBe(0);
      expect(r.stdout).toMatch(/with TLS/);
      expect(r.stdout).toMatch(/export-size: 4194304/);
      expect(s.peers[0]).toMatchObject({ kind: "x509", commonName: "primary-a", verified: true });
    });

    it("nbdcopy writes over PSK and the data arrives exactly", async () => {
      const s = await serve({ mode: "require", psk: pki.psk.alice });
      const r = await run("nbdcopy", [
        source,
        `nbds://alice@127.0.0.1:${s.port}/?tls-psk-file=${pki.psk.alice}`,
      ]);
      expect(r.exitCode, describeRun(r)).toBe(0);
      const back = Buffer.alloc(SIZE);
      await s.volume.read(back, 0);
      expect(back.equals(data)).toBe(true);
      expect(s.peers[0]).toEqual({ kind: "psk", identity: "alice" });
    });

    it("qemu-img with tls-creds-x509 and tls-creds-psk", async () => {
      const x = await serve({ mode: "require", certificates: pki.good });
      const creds = `tls-creds-x509,id=tls0,endpoint=client,dir=${pki.good}`;
      const r1 = await run("qemu-img", [
        "info",
        "--object",
        creds,
        "--image-opts",
        `driver=nbd,host=127.0.0.1,port=${x.port},tls-creds=tls0`,
      ]);
      expect(r1.exitCode, describeRun(r1)).toBe(0);
      expect(r1.stdout).toMatch(/virtual size: 4 MiB/);

      const p = await serve({ mode: "require", psk: pki.psk.alice });
      const r2 = await run("qemu-img", [
        "convert",
        "-n",
        "-f",
        "raw",
        "--object",
        `tls-creds-psk,id=tls0,endpoint=client,dir=${pki.qemuPsk},username=alice`,
        source,
        "--target-image-opts",
        `driver=nbd,host=127.0.0.1,port=${p.port},tls-creds=tls0`,
      ]);
      expect(r2.exitCode, describeRun(r2)).toBe(0);
      const back = Buffer.alloc(SIZE);
      await p.volume.read(back, 0);
      expect(back.equals(data)).toBe(true);
    });

    it("--tls on serves plain clients and TLS clients alike", async () => {
      const s = await serve({ mode: "on", certificates: pki.good });
      const plain = await run("nbdinfo", [`nbd://127.0.0.1:${s.port}/`]);
      expect(plain.stdout, describeRun(plain)).toMatch(/without TLS/);
      const secure = await run("nbdinfo", [
        `nbds://127.0.0.1:${s.port}/?tls-certificates=${pki.caOnly}`,
      ]);
      expect(secure.stdout, describeRun(secure)).toMatch(/with TLS/);
    });
  });

  describe("refusals, on both sides, with no data moved", () => {
    it("a plain client against --tls require gets NBD_REP_ERR_TLS_REQD", async () => {
      const s = await serve({ mode: "require", psk: pki.psk.alice });
      failed(await run("nbdcopy", [source, `nbd://127.0.0.1:${s.port}/`]));
      const err = await rejection(connectUri(`nbd://127.0.0.1:${s.port}/`));
      expect(err.message).toMatch(/NBD_REP_ERR_TLS_REQD: this server requires TLS/);
      expect(await untouched(s.volume)).toBe(true);
    });

    it("a wrong PSK key and an unknown identity", async () => {
      const s = await serve({ mode: "require", psk: pki.psk.alice });
      const wrong = `nbds://alice@127.0.0.1:${s.port}/?tls-psk-file=${pki.psk.aliceWrong}`;
      failed(await run("nbdcopy", [source, wrong]));
      expect(await logged(s.warnings, /key for "alice" is not the one/)).toMatch(/TLS handshake/);
      const err = await rejection(connectUri(wrong));
      expect(err.message).toMatch(/TLS handshake with the server failed/);
      const eve = `nbds://eve@127.0.0.1:${s.port}/?tls-psk-file=${pki.psk.eve}`;
      failed(await run("nbdcopy", [source, eve]));
      expect(await logged(s.warnings, /identity "eve" is not in the PSK file/)).toMatch(/TLS/);
      expect(await untouched(s.volume)).toBe(true);
    });

    it("a server certificate from another CA, and an expired one", async () => {
      const rogue = await serve({ mode: "require", certificates: pki.rogue });
      const r = await run("nbdcopy", [
        source,
        `nbds://127.0.0.1:${rogue.port}/?tls-certificates=${pki.caOnly}`,
      ]);
      failed(r);
      expect(r.stderr).toMatch(/certificate|gnutls/i);
      const err = await rejection(
        connectUri(`nbds://127.0.0.1:${rogue.port}/?tls-certificates=${pki.caOnly}`),
      );
      expect(err.message).toMatch(/TLS handshake with the server failed: .*certificate/);
      expect(await untouched(rogue.volume)).toBe(true);

      const expired = await serve({ mode: "require", certificates: pki.expired });
      const err2 = await rejection(
        connectUri(`nbds://127.0.0.1:${expired.port}/?tls-certificates=${pki.caOnly}`),
      );
      expect(err2.message).toMatch(/certificate has expired/);
      failed(
        await run("nbdcopy", [
          source,
          `nbds://127.0.0.1:${expired.port}/?tls-certificates=${pki.caOnly}`,
        ]),
      );
      expect(await untouched(expired.volume)).toBe(true);
    });

    it("--tls-verify-peer refuses a client certificate from another CA, and none", async () => {
      const s = await serve({ mode: "require", certificates: pki.good, verifyPeer: true });
      // rogue/ trusts only the rogue CA, so give the client good/'s CA and rogue's certificate.
      const { cp, mkdir } = await import("node:fs/promises");
      const mixed = join(await makeTempDir("peercopy-tls-mixed-"), "c");
      await mkdir(mixed);
      await cp(join(pki.good, "ca-cert.pem"), join(mixed, "ca-cert.pem"));
      await cp(join(pki.rogue, "client-cert.pem"), join(mixed, "client-cert.pem"));
      await cp(join(pki.rogue, "client-key.pem"), join(mixed, "client-key.pem"));
      failed(
        await run("nbdcopy", [source, `nbds://127.0.0.1:${s.port}/?tls-certificates=${mixed}`]),
      );
      expect(await logged(s.warnings, /client certificate is not accepted/)).toMatch(/TLS/);
      const err = await rejection(
        connectUri(`nbds://127.0.0.1:${s.port}/?tls-certificates=${pki.caOnly}`),
      );
      expect(err.message).toMatch(/server/);
      expect(await untouched(s.volume)).toBe(true);
    });
  });

  describe("peercopy's client against nbdkit and qemu-nbd", () => {
    async function roundTrip(uri: string): Promise<void> {
      const client = await connectUri(uri);
      try {
        const block = randomBytes(65536);
        await client.write(block, 65536);
        const back = Buffer.alloc(65536);
        await client.read(back, 65536);
        expect(back.equals(block)).toBe(true);
      } finally {
        await client.close();
      }
    }

    it("nbdkit --tls=require with X.509 (and --tls-verify-peer) and with PSK", async () => {
      const x = await startNbdkit({
        flags: ["--tls=require", "--tls-verify-peer", `--tls-certificates=${pki.good}`],
        plugin: ["memory", "4M"],
      });
      await roundTrip(`nbds://${formatEndpoint(x.endpoint)}/?tls-certificates=${pki.good}`);
      const p = await startNbdkit({
        flags: ["--tls=require", `--tls-psk=${pki.psk.alice}`],
        plugin: ["memory", "4M"],
      });
      await roundTrip(`nbds://alice@${formatEndpoint(p.endpoint)}/?tls-psk-file=${pki.psk.alice}`);
      const err = await rejection(
        connectUri(
          `nbds://alice@${formatEndpoint(p.endpoint)}/?tls-psk-file=${pki.psk.aliceWrong}`,
        ),
      );
      expect(err.message).toMatch(/TLS handshake with the server failed/);
      const plain = await rejection(NbdClient.connect({ endpoint: p.endpoint }));
      expect(plain.message).toMatch(/NBD_REP_ERR_TLS_REQD/);
    });

    it("qemu-nbd --tls-creds with X.509", async () => {
      const dir = await makeTempDir("peercopy-tls-qemu-");
      const image = join(dir, "disk.img");
      const { writeFile } = await import("node:fs/promises");
      await writeFile(image, Buffer.alloc(SIZE));
      const q = await startQemuNbd({
        image,
        flags: [
          "--object",
          `tls-creds-x509,id=tls0,endpoint=server,dir=${pki.good},verify-peer=off`,
          "--tls-creds",
          "tls0",
        ],
      });
      await roundTrip(`nbds://${formatEndpoint(q.endpoint)}/?tls-certificates=${pki.good}`);
      const err = await rejection(
        connectUri(`nbds://${formatEndpoint(q.endpoint)}/?tls-certificates=${pki.rogue}`),
      );
      expect(err.message).toMatch(/TLS handshake with the server failed/);
    });
  });
});
