// NbdClient against real nbdkit servers: the memory plugin in its variants
// (simple replies only, EXPORT_NAME only, read-only, block size limits, error
// injection), the file plugin on a sparse file, and a unix socket.
import { randomBytes } from "node:crypto";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NbdClient, connectUri, listExports, queryExport } from "../../nbd/client/index.js";
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from "../../nbd/constants.js";
import { NbdRequestError } from "../../nbd/errors.js";
import { makeTempDir, requirePeer, startNbdkit, stopPeers, type Peer } from "../helpers/peers.js";

const FUA = 1;
const NO_HOLE = 2;
const MiB = 1024 * 1024;

const hasNbdkit = requirePeer("nbdkit");

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected a rejection");
}

/** Open a client, run `body`, close it cleanly (and check that it closed cleanly). */
async function withClient<T>(
  peer: Peer,
  body: (client: NbdClient) => T | Promise<T>,
  options: { structuredReplies?: boolean } = {},
): Promise<T> {
  const client = await NbdClient.connect({ endpoint: peer.endpoint, ...options });
  try {
    return await body(client);
  } finally {
    await client.close();
    expect(await client.closed).toBeUndefined();
  }
}

/** 256 non-overlapping random writes in flight at once, then 256 reads, checked. */
async function pipelinedRoundTrip(client: NbdClient, base: number): Promise<void> {
  const slot = 64 * 1024;
  const blocks = Array.from({ length: 256 }, (_, i) => {
    const length = 512 * (1 + Math.floor(Math.random() * (slot / 512)));
    return { offset: base + i * slot, data: randomBytes(length) };
  });
  await Promise.all(blocks.map((b) => client.write(b.data, b.offset)));
  const reads = blocks.map((b) => Buffer.alloc(b.data.length));
  const pending = blocks.map((b, i) => client.read(reads[i] ?? Buffer.alloc(0), b.offset));
  expect(client.inFlight).toBeGreaterThan(1);
  await Promise.all(pending);
  blocks.forEach((b, i) => expect(reads[i]?.equals(b.data)).toBe(true));
}

describe.skipIf(!hasNbdkit)("NbdClient with nbdkit memory", () => {
  let peer: Peer;
  beforeAll(async () => {
    peer = await startNbdkit({ plugin: ["memory", "64M"] });
  });
  afterAll(stopPeers);

  it("negotiates GO, structured replies and base:allocation", async () => {
    await withClient(peer, (client) => {
      expect(client.size).toBe(64 * MiB);
      expect(client.negotiated).toMatchObject({ protocol: "newstyle-fixed", via: "NBD_OPT_GO" });
      expect(client.structuredReplies).toBe(true);
      expect(client.metaContexts.has("base:allocation")).toBe(true);
      expect(client.capabilities).toMatchObject({
        readOnly: false,
        flush: true,
        fua: true,
        trim: true,
        zero: true,
        blockStatus: true,
      });
    });
  });

  it("round-trips bytes, including a 40 MiB request split at 32 MiB", async () => {
    await withClient(peer, async (client) => {
      const small = randomBytes(12345);
      await client.write(small, 3 * 512);
      const back = Buffer.alloc(small.length);
      await client.read(back, 3 * 512);
      expect(back.equals(small)).toBe(true);
      const big = randomBytes(40 * MiB);
      await client.write(big, 16 * MiB);
      const bigBack = Buffer.alloc(big.length);
      await client.read(bigBack, 16 * MiB);
      expect(bigBack.equals(big)).toBe(true);
    });
  });

  it("keeps 256 random writes and reads in flight at once", async () => {
    await withClient(peer, (client) => pipelinedRoundTrip(client, 0));
  });

  it("writes with FUA, flushes, trims and zeroes (with and without NO_HOLE)", async () => {
    await withClient(peer, async (client) => {
      const data = randomBytes(256 * 1024);
      await client.write(data, 0, FUA);
      await client.flush();
      await client.zero(0, 64 * 1024);
      await client.zero(64 * 1024, 64 * 1024, NO_HOLE);
      await client.zero(128 * 1024, 64 * 1024, FUA);
      const back = Buffer.alloc(data.length);
      await client.read(back, 0);
      expect(back.subarray(0, 192 * 1024).every((b) => b === 0)).toBe(true);
      expect(back.subarray(192 * 1024).equals(data.subarray(192 * 1024))).toBe(true);
      await client.trim(0, 256 * 1024, FUA);
      await client.cache(0, 4096);
    });
  });

  it("reports block status: holes where nothing was written, data where it was", async () => {
    await withClient(peer, async (client) => {
      const base = 60 * MiB;
      await client.trim(base, 4 * MiB);
      await client.write(randomBytes(MiB), base + MiB);
      const extents = await client.blockStatus(base, 4 * MiB);
      expect(extents.reduce((sum, e) => sum + e.length, 0)).toBe(4 * MiB);
      expect(extents[0]).toEqual({ length: MiB, flags: NBD_STATE_HOLE | NBD_STATE_ZERO });
      expect(extents[1]).toEqual({ length: MiB, flags: 0 });
      const clipped = await client.blockStatus(base, 4096);
      expect(clipped).toEqual([{ length: 4096, flags: NBD_STATE_HOLE | NBD_STATE_ZERO }]);
    });
  });

  it("lists the export and describes it without entering transmission", async () => {
    const exports = await listExports({ endpoint: peer.endpoint });
    expect(exports.map((e) => e.name)).toEqual([""]);
    const info = await queryExport({ endpoint: peer.endpoint });
    expect(info.size).toBe(64 * MiB);
    expect(info.structuredReplies).toBe(true);
    expect(info.metaContexts.has("base:allocation")).toBe(true);
  });

  it("connects by URI", async () => {
    const client = await connectUri(peer.uri);
    expect(client.size).toBe(64 * MiB);
    await client.close();
  });

  it("tells its supervisor when the server goes away", async () => {
    const own = await startNbdkit({ plugin: ["memory", "1M"] });
    const client = await NbdClient.connect({ endpoint: own.endpoint });
    const closed = new Promise<Error | undefined>((resolve) => client.once("close", resolve));
    await own.stop();
    const reason = await closed;
    expect(reason).toBeInstanceOf(Error);
    const err = await rejection(client.read(Buffer.alloc(512), 0));
    expect((err as Error & { code: string }).code).toBe("NBD_DISCONNECTED");
  });
});

describe.skipIf(!hasNbdkit)("NbdClient with nbdkit variants", () => {
  afterAll(stopPeers);

  it("works with simple replies only (--no-sr)", async () => {
    const peer = await startNbdkit({ flags: ["--no-sr"], plugin: ["memory", "64M"] });
    await withClient(peer, async (client) => {
      expect(client.structuredReplies).toBe(false);
      expect(client.capabilities.blockStatus).toBe(false);
      await pipelinedRoundTrip(client, 0);
      const err = await rejection(client.blockStatus(0, 512));
      expect(err).toBeInstanceOf(NbdRequestError);
    });
  });

  it("falls back to NBD_OPT_EXPORT_NAME (--mask-handshake=0)", async () => {
    const peer = await startNbdkit({ flags: ["--mask-handshake=0"], plugin: ["memory", "16M"] });
    await withClient(peer, async (client) => {
      expect(client.negotiated).toMatchObject({ protocol: "newstyle", via: "NBD_OPT_EXPORT_NAME" });
      expect(client.structuredReplies).toBe(false);
      const data = randomBytes(MiB);
      await client.write(data, MiB);
      const back = Buffer.alloc(MiB);
      await client.read(back, MiB);
      expect(back.equals(data)).toBe(true);
    });
  });

  it("gets an error reply from a read-only server and keeps the connection", async () => {
    const peer = await startNbdkit({ flags: ["-r"], plugin: ["memory", "16M"] });
    await withClient(peer, async (client) => {
      expect(client.capabilities.readOnly).toBe(true);
      const err = await rejection(client.write(Buffer.alloc(512), 0));
      expect(err).toBeInstanceOf(NbdRequestError);
      expect((err as NbdRequestError).errno).toBeGreaterThan(0);
      expect(err.message).toMatch(/NBD_CMD_WRITE at offset 0 length 512 failed/);
      const back = Buffer.alloc(512, 1);
      await client.read(back, 0);
      expect(back.every((b) => b === 0)).toBe(true);
    });
  });

  it("surfaces injected I/O errors as NbdRequestError (EIO)", async () => {
    const peer = await startNbdkit({
      flags: ["--filter=error"],
      plugin: ["memory", "16M", "error-pwrite=EIO", "error-pwrite-rate=100%"],
    });
    for (const structuredReplies of [true, false]) {
      await withClient(
        peer,
        async (client) => {
          const err = await rejection(client.write(Buffer.alloc(4096), 0));
          expect((err as NbdRequestError).code).toBe("EIO");
          await client.read(Buffer.alloc(4096), 0);
        },
        { structuredReplies },
      );
    }
  });

  it("honours the server's block sizes (blocksize-policy)", async () => {
    const peer = await startNbdkit({
      flags: ["--filter=blocksize-policy"],
      plugin: [
        "memory",
        "16M",
        "blocksize-minimum=512",
        "blocksize-preferred=4096",
        "blocksize-maximum=65536",
        "blocksize-error-policy=error",
      ],
    });
    await withClient(peer, async (client) => {
      expect(client.blockSizes).toEqual({ minimum: 512, preferred: 4096, maximum: 65536 });
      const data = randomBytes(MiB + 4096);
      await client.write(data, 8192);
      const back = Buffer.alloc(data.length);
      await client.read(back, 8192);
      expect(back.equals(data)).toBe(true);
      const err = await rejection(client.write(Buffer.alloc(100), 0));
      expect((err as NbdRequestError).code).toBe("EINVAL");
      await pipelinedRoundTrip(client, 0);
    });
  });

  it("reads holes and data of a sparse file (nbdkit file)", async () => {
    const dir = await makeTempDir();
    const image = join(dir, "sparse.img");
    const content = randomBytes(64 * 1024);
    const file = await open(image, "w");
    await file.truncate(8 * MiB);
    await file.write(content, 0, content.length, 2 * MiB);
    await file.close();
    const peer = await startNbdkit({ plugin: ["file", image] });
    await withClient(peer, async (client) => {
      const extents = await client.blockStatus(0, 8 * MiB);
      expect(extents[0]?.flags ?? 0).toBe(NBD_STATE_HOLE | NBD_STATE_ZERO);
      let at = 0;
      const dataAt = extents.find((e) => {
        const found = (e.flags & NBD_STATE_HOLE) === 0;
        if (!found) at += e.length;
        return found;
      });
      expect(dataAt).toBeDefined();
      expect(at).toBeLessThanOrEqual(2 * MiB);
      const back = Buffer.alloc(4 * MiB);
      await client.read(back, 0);
      expect(back.subarray(2 * MiB, 2 * MiB + content.length).equals(content)).toBe(true);
      expect(back.subarray(0, 2 * MiB).every((b) => b === 0)).toBe(true);
    });
  });

  it("closes with NBD_CMD_DISC once the requests in flight are answered", async () => {
    const peer = await startNbdkit({ flags: ["-v"], plugin: ["memory", "1M"] });
    const client = await NbdClient.connect({ endpoint: peer.endpoint });
    const writes = [client.write(randomBytes(4096), 0), client.write(randomBytes(4096), 4096)];
    const closing = client.close();
    await Promise.all(writes);
    await closing;
    expect(await client.closed).toBeUndefined();
    await expect.poll(() => peer.stderr()).toMatch(/client sent NBD_CMD_DISC/);
  });

  it("connects over a unix socket by nbd+unix URI", async () => {
    const peer = await startNbdkit({ unix: true, plugin: ["memory", "16M"] });
    expect(peer.uri).toMatch(/^nbd\+unix:\/\/\/\?socket=/);
    const client = await connectUri(peer.uri);
    await pipelinedRoundTrip(client, 0);
    await client.close();
    expect(await client.closed).toBeUndefined();
  });
});
