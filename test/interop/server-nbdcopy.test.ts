// Bulk copies in and out with nbdcopy (several connections when multi-conn is
// offered), the largest request the server accepts, and two clients writing at once.
import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  MAX_PAYLOAD,
  createSparseFile,
  serveForTest,
  serverKind,
  tempDirForTest,
} from "../helpers/server.js";
import { describeRun, nbdsh, py, requireTools, run, runOk } from "../helpers/tools.js";

const ready = requireTools("nbdcopy", "nbdsh", "cmp");
const MiB = 1024 * 1024;

async function randomFile(path: string, size: number): Promise<Buffer> {
  const data = randomBytes(size);
  await writeFile(path, data);
  return data;
}

async function expectSame(a: string, b: string, length?: number): Promise<void> {
  const args = length === undefined ? [a, b] : ["-n", String(length), a, b];
  const result = await run("cmp", args);
  expect(result.exitCode, describeRun(result)).toBe(0);
}

describe.skipIf(!ready)(`nbdcopy against ${serverKind()}`, () => {
  for (const transport of ["tcp", "unix"] as const) {
    it(`copies random data in and out over ${transport}`, async () => {
      const dir = await tempDirForTest();
      const image = join(dir, "disk.img");
      const src = join(dir, "src.bin");
      const back = join(dir, "back.bin");
      await createSparseFile(image, 8 * MiB);
      await randomFile(src, 8 * MiB);
      const server = await serveForTest({ image, transport });

      await runOk("nbdcopy", ["--flush", src, server.uri]);
      await runOk("nbdcopy", [server.uri, back]);
      await expectSame(src, back);

      // A clean stop flushes: the bytes are in the file itself.
      const exit = await server.stop();
      expect(exit.exitCode).toBe(0);
      await expectSame(src, image);
    });
  }

  it("accepts one 32 MiB write and serves it back in 32 MiB reads", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "disk.img");
    const big = join(dir, "big.bin");
    const back = join(dir, "back.bin");
    await createSparseFile(image, 2 * MAX_PAYLOAD);
    await randomFile(big, MAX_PAYLOAD);
    const server = await serveForTest({ image });

    const size = String(MAX_PAYLOAD);
    await runOk("nbdcopy", [`--request-size=${size}`, "-C", "1", "--flush", big, server.uri]);
    await runOk("nbdcopy", [`--request-size=${size}`, "-C", "1", server.uri, back]);
    await expectSame(big, back, MAX_PAYLOAD);
    // The second half was never written and must still read as zeroes.
    const tail = (await readFile(back)).subarray(MAX_PAYLOAD);
    expect(tail.length).toBe(MAX_PAYLOAD);
    expect(tail.every((b) => b === 0)).toBe(true);
  });

  it("keeps two concurrent connections writing disjoint halves coherent (multi-conn)", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "disk.img");
    const whole = join(dir, "whole.bin");
    const back = join(dir, "back.bin");
    const half = 8 * MiB;
    await createSparseFile(image, 2 * half);
    const data = await randomFile(whole, 2 * half);
    await writeFile(join(dir, "a.bin"), data.subarray(0, half));
    await writeFile(join(dir, "b.bin"), data.subarray(half));
    const server = await serveForTest({ image });

    // Each writer sends 256 KiB requests, several in flight, then flushes: with
    // multi-conn the flush on one connection covers what both wrote.
    const writer = (file: string, offset: number): Promise<unknown> =>
      nbdsh(
        [
          "-c",
          `
h.connect_uri(${py(server.uri)})
assert h.can_multi_conn(), "server does not offer multi-conn"
data = open(${py(join(dir, file))}, "rb").read()
chunk = 256 * 1024
cookies = []
for i in range(0, len(data), chunk):
    cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data[i:i + chunk])), ${offset} + i))
    while h.aio_in_flight() >= 8:
        h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    assert h.aio_command_completed(c)
h.flush()
h.shutdown()
print("WROTE", len(data))
`,
        ],
        { timeoutMs: 60_000 },
      ).then((result) => {
        expect(result.exitCode, describeRun(result)).toBe(0);
        expect(result.stdout).toContain(`WROTE ${half}`);
      });
    await Promise.all([writer("a.bin", 0), writer("b.bin", half)]);

    // Read back over yet another pair of connections.
    await runOk("nbdcopy", ["-C", "2", server.uri, back]);
    await expectSame(whole, back);
  });
});
