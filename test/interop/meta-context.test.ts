// Metadata contexts beyond base:allocation against real tools: an in-process
// NbdServer publishes "peercopy:test" (flag 1 on the first 64 KiB of every
// 256 KiB, the way peercopy:out-of-sync marks tracks) and nbdinfo, nbdsh and
// qemu-img read it; our client reads it back, and reads qemu-nbd's
// qemu:dirty-bitmap:NAME.
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NbdClient, connectUri } from "../../nbd/client/index.js";
import { NbdRequestError } from "../../nbd/errors.js";
import type { Extent, MetaContextSource } from "../../nbd/export.js";
import { NbdServer } from "../../nbd/server/server.js";
import type { Listener } from "../../nbd/transport.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import { makeTempDir, requirePeer, startQemuNbd, stopPeers } from "../helpers/peers.js";
import { nbdshScript, py, requireTools, runOk, type NbdshOutcome } from "../helpers/tools.js";

const KiB = 1024;
const SIZE = 1024 * KiB;
const CONTEXT = "peercopy:test";

function pattern(size: number): MetaContextSource {
  return {
    name: CONTEXT,
    blockStatus(offset: number, length: number): Promise<Extent[]> {
      const out: Extent[] = [];
      const end = Math.min(offset + length, size);
      for (let at = offset; at < end;) {
        const within = at % (256 * KiB);
        const dirty = within < 64 * KiB;
        const stop = Math.min(end, at - within + (dirty ? 64 * KiB : 256 * KiB));
        out.push({ length: stop - at, flags: dirty ? 1 : 0 });
        at = stop;
      }
      return Promise.resolve(out);
    },
  };
}

/** [start, length, flags] of the pattern over the whole export. */
const EXPECTED: [number, number, number][] = [0, 1, 2, 3].flatMap((i) => [
  [i * 256 * KiB, 64 * KiB, 1],
  [i * 256 * KiB + 64 * KiB, 192 * KiB, 0],
]);

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected a rejection");
}

describe("a peercopy metadata context", () => {
  let server: NbdServer;
  let listener: Listener;
  let uri: string;
  let port: number;

  beforeAll(async () => {
    const volume = new MemoryBackend(SIZE);
    await volume.write(Buffer.alloc(4096, 1), 0, 0);
    server = new NbdServer({
      exports: [
        { name: "", description: "meta context test", volume, metaContexts: [pattern(SIZE)] },
      ],
    });
    listener = await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 });
    if (listener.endpoint.kind !== "tcp") throw new Error("expected a TCP listener");
    port = listener.endpoint.port;
    uri = `nbd://127.0.0.1:${port}/`;
  });
  afterAll(async () => {
    await server.close();
  });

  describe.skipIf(!requireTools("nbdinfo"))("nbdinfo", () => {
    it("--map=peercopy:test prints the pattern", async () => {
      const { stdout } = await runOk("nbdinfo", [`--map=${CONTEXT}`, uri], { timeoutMs: 20_000 });
      const lines = stdout
        .trim()
        .split("\n")
        .map((l) => l.trim().split(/\s+/).map(Number));
      expect(lines).toEqual(EXPECTED);
    });

    it("--list --json and --json show the context", async () => {
      for (const args of [["--list", "--json"], ["--json"]]) {
        const { stdout } = await runOk("nbdinfo", [...args, uri], { timeoutMs: 20_000 });
        const report = JSON.parse(stdout) as { exports: { contexts?: string[] }[] };
        expect(report.exports[0]?.contexts).toEqual(["base:allocation", CONTEXT]);
      }
    });
  });

  describe.skipIf(!requireTools("nbdsh"))("nbdsh", () => {
    it("add_meta_context and block_status see the pattern", async () => {
      const res = await nbdshScript(`
h.add_meta_context(${py(CONTEXT)})
h.connect_uri(${py(uri)})
attempt("negotiated", lambda: h.can_meta_context(${py(CONTEXT)}))
attempt("allocation", lambda: h.can_meta_context("base:allocation"))
seen = {}
def cb(metacontext, offset, entries, err):
    seen[metacontext] = list(entries)
    return 0
h.block_status(${SIZE}, 0, cb)
attempt("pattern", lambda: _json.dumps(seen.get(${py(CONTEXT)})))
seen.clear()
h.block_status(${200 * KiB}, ${300 * KiB}, cb, nbd.CMD_FLAG_REQ_ONE)
attempt("req_one", lambda: _json.dumps(seen.get(${py(CONTEXT)})))
h.shutdown()
`);
      expect(res.negotiated).toEqual({ ok: true, value: true });
      expect(res.allocation).toEqual({ ok: true, value: false });
      const pairs = EXPECTED.flatMap(([, length, flags]) => [length, flags]);
      const decoded = (o: NbdshOutcome | undefined): unknown =>
        o?.ok === true && typeof o.value === "string" ? JSON.parse(o.value) : o;
      expect(decoded(res.pattern)).toEqual(pairs);
      // 300 KiB lies in the marked run [256 KiB, 320 KiB).
      expect(decoded(res.req_one)).toEqual([20 * KiB, 1]);
    });
  });

  describe.skipIf(!requireTools("qemu-img"))("qemu-img map", () => {
    it("x-dirty-bitmap=peercopy:test reports marked ranges as data: false", async () => {
      const opts = `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},x-dirty-bitmap=${CONTEXT}`;
      const { stdout } = await runOk("qemu-img", ["map", "--output=json", "--image-opts", opts], {
        timeoutMs: 30_000,
      });
      const map = JSON.parse(stdout) as { start: number; length: number; data: boolean }[];
      // qemu reads a dirty bitmap context inverted: a set bit shows as "data": false.
      expect(map.map((e) => [e.start, e.length, e.data ? 0 : 1])).toEqual(EXPECTED);
    });
  });

  describe("NbdClient", () => {
    it("blockStatusOf reads the context; blockStatus still reads base:allocation", async () => {
      const client = await connectUri(uri, { metaContexts: [CONTEXT] });
      try {
        expect([...client.metaContexts.keys()].sort()).toEqual(["base:allocation", CONTEXT]);
        const extents = await client.blockStatusOf(CONTEXT, 0, SIZE);
        expect(extents.map((e) => [e.length, e.flags])).toEqual(
          EXPECTED.map(([, length, flags]) => [length, flags]),
        );
        expect(await client.blockStatusOf(CONTEXT, 300 * KiB, 200 * KiB, 8)).toEqual([
          { length: 20 * KiB, flags: 1 },
        ]);
        expect(await client.blockStatus(0, SIZE)).toEqual([
          { length: 64 * KiB, flags: 0 },
          { length: SIZE - 64 * KiB, flags: 3 },
        ]);
        const err = await rejection(client.blockStatusOf("peercopy:nope", 0, 4096));
        expect(err).toBeInstanceOf(NbdRequestError);
        expect(err.message).toMatch(/"peercopy:nope"/);
      } finally {
        await client.close();
      }
    });

    it("without base:allocation, blockStatusOf works and blockStatus refuses", async () => {
      const client = await connectUri(uri, { blockStatus: false, metaContexts: [CONTEXT] });
      try {
        expect([...client.metaContexts.keys()]).toEqual([CONTEXT]);
        expect(await client.blockStatusOf(CONTEXT, 0, 64 * KiB)).toEqual([
          { length: 64 * KiB, flags: 1 },
        ]);
        expect((await rejection(client.blockStatus(0, 4096))).message).toMatch(/base:allocation/);
      } finally {
        await client.close();
      }
    });
  });
});

describe.skipIf(!(requirePeer("qemu-nbd") && requireTools("qemu-img", "qemu-io")))(
  "NbdClient with qemu-nbd -B (qemu:dirty-bitmap:b0)",
  () => {
    let client: NbdClient;

    beforeAll(async () => {
      const image = join(await makeTempDir(), "x.qcow2");
      await runOk("qemu-img", ["create", "-f", "qcow2", image, "1M"]);
      await runOk("qemu-img", ["bitmap", "--add", image, "b0"]);
      await runOk("qemu-io", ["-c", "write 0 64k", image]);
      // The later -f overrides startQemuNbd's "-f raw".
      const peer = await startQemuNbd({ image, flags: ["-f", "qcow2", "-B", "b0"] });
      client = await NbdClient.connect({
        endpoint: peer.endpoint,
        metaContexts: ["qemu:dirty-bitmap:b0"],
      });
    });
    afterAll(async () => {
      await client.close();
      await stopPeers();
    });

    it("shows the first 64 KiB dirty", async () => {
      expect(client.metaContexts.has("qemu:dirty-bitmap:b0")).toBe(true);
      const extents = await client.blockStatusOf("qemu:dirty-bitmap:b0", 0, SIZE);
      expect(extents).toEqual([
        { length: 64 * KiB, flags: 1 },
        { length: SIZE - 64 * KiB, flags: 0 },
      ]);
      const one = await client.blockStatusOf("qemu:dirty-bitmap:b0", 32 * KiB, 64 * KiB, 8);
      expect(one).toEqual([{ length: 32 * KiB, flags: 1 }]);
      // base:allocation arrives in the same reply and still works.
      const allocation = await client.blockStatus(0, SIZE);
      expect(allocation[0]?.flags).toBe(0);
    });
  },
);
