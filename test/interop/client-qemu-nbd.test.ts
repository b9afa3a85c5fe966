// NbdClient against qemu-nbd serving a sparse raw image: reads that span holes
// come back as NBD_REPLY_TYPE_OFFSET_HOLE chunks, there is no multi-conn, and
// qemu-nbd serves one client at a time.
import { randomBytes } from "node:crypto";
import { open, readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NbdClient, connectUri } from "../../nbd/client/index.js";
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from "../../nbd/constants.js";
import { NbdRequestError } from "../../nbd/errors.js";
import { makeTempDir, requirePeer, startQemuNbd, stopPeers, type Peer } from "../helpers/peers.js";

const MiB = 1024 * 1024;
const FUA = 1;
const NO_HOLE = 2;

const hasQemuNbd = requirePeer("qemu-nbd");

async function sparseImage(size: number, dataAt: number, data: Buffer): Promise<string> {
  const image = join(await makeTempDir(), "disk.img");
  const file = await open(image, "w");
  await file.truncate(size);
  await file.write(data, 0, data.length, dataAt);
  await file.close();
  return image;
}

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected a rejection");
}

describe.skipIf(!hasQemuNbd)("NbdClient with qemu-nbd", () => {
  const seed = randomBytes(128 * 1024);
  let image: string;
  let peer: Peer;
  let client: NbdClient;

  beforeAll(async () => {
    image = await sparseImage(32 * MiB, 4 * MiB, seed);
    peer = await startQemuNbd({ image });
    client = await NbdClient.connect({ endpoint: peer.endpoint });
  });
  afterAll(async () => {
    await client.close();
    await stopPeers();
  });

  it("negotiates structured replies and base:allocation, without multi-conn", () => {
    expect(client.size).toBe(32 * MiB);
    expect(client.structuredReplies).toBe(true);
    expect(client.capabilities.blockStatus).toBe(true);
    expect(client.capabilities.multiConn).toBe(false);
  });

  it("reads across holes and data (OFFSET_HOLE chunks) byte for byte", async () => {
    const back = Buffer.alloc(8 * MiB, 0xaa);
    await client.read(back, 0);
    const expected = Buffer.alloc(8 * MiB);
    seed.copy(expected, 4 * MiB);
    expect(back.equals(expected)).toBe(true);
  });

  it("reports the sparse layout through block status", async () => {
    const extents = await client.blockStatus(0, 8 * MiB);
    expect(extents.reduce((sum, e) => sum + e.length, 0)).toBe(8 * MiB);
    expect(extents[0]).toEqual({ length: 4 * MiB, flags: NBD_STATE_HOLE | NBD_STATE_ZERO });
    expect(extents[1]?.flags).toBe(0);
  });

  it("keeps 256 random writes and reads in flight, and the image file agrees", async () => {
    const base = 16 * MiB;
    const slot = 32 * 1024;
    const blocks = Array.from({ length: 256 }, (_, i) => ({
      offset: base + i * slot,
      data: randomBytes(512 * (1 + Math.floor(Math.random() * (slot / 512)))),
    }));
    await Promise.all(blocks.map((b) => client.write(b.data, b.offset)));
    const reads = blocks.map((b) => Buffer.alloc(b.data.length));
    await Promise.all(blocks.map((b, i) => client.read(reads[i] ?? Buffer.alloc(0), b.offset)));
    blocks.forEach((b, i) => expect(reads[i]?.equals(b.data)).toBe(true));
    await client.flush();
    const onDisk = await readFile(image);
    for (const b of blocks) {
      expect(onDisk.subarray(b.offset, b.offset + b.data.length).equals(b.data)).toBe(true);
    }
  });

  it("writes with FUA, trims and zeroes", async () => {
    const data = randomBytes(256 * 1024);
    await client.write(data, 12 * MiB, FUA);
    await client.zero(12 * MiB, 64 * 1024, NO_HOLE);
    await client.zero(12 * MiB + 64 * 1024, 64 * 1024);
    await client.trim(12 * MiB + 128 * 1024, 64 * 1024);
    const back = Buffer.alloc(data.length);
    await client.read(back, 12 * MiB);
    expect(back.subarray(0, 128 * 1024).every((b) => b === 0)).toBe(true);
    expect(back.subarray(192 * 1024).equals(data.subarray(192 * 1024))).toBe(true);
  });
});

describe.skipIf(!hasQemuNbd)("NbdClient with qemu-nbd variants", () => {
  afterAll(stopPeers);

  it("gets an error reply from a read-only export and keeps the connection", async () => {
    const image = await sparseImage(MiB, 0, Buffer.from("hello"));
    const peer = await startQemuNbd({ image, flags: ["--read-only"] });
    const client = await NbdClient.connect({ endpoint: peer.endpoint });
    expect(client.capabilities.readOnly).toBe(true);
    const err = await rejection(client.write(Buffer.alloc(512), 0));
    expect(err).toBeInstanceOf(NbdRequestError);
    expect((err as NbdRequestError).errno).toBeGreaterThan(0);
    const back = Buffer.alloc(5);
    await client.read(back, 0);
    expect(back.toString()).toBe("hello");
    await client.close();
    expect(await client.closed).toBeUndefined();
  });

  it("serves over a unix socket", async () => {
    const image = await sparseImage(MiB, 0, Buffer.alloc(0));
    const peer = await startQemuNbd({ image, unix: true });
    const client = await connectUri(peer.uri);
    const data = randomBytes(MiB);
    await client.write(data, 0);
    const back = Buffer.alloc(MiB);
    await client.read(back, 0);
    expect(back.equals(data)).toBe(true);
    await client.close();
  });
});
