// qemu as a client: qemu-img convert/compare/map and qemu-io's single commands
// with FUA, WRITE_ZEROES (with and without NO_HOLE), FAST_ZERO, TRIM and FLUSH.
import { randomBytes } from "node:crypto";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createSparseFile, serveForTest, serverKind, tempDirForTest } from "../helpers/server.js";
import { describeRun, requireTools, run, runOk, type RunResult } from "../helpers/tools.js";

const ready = requireTools("qemu-img", "qemu-io");
const MiB = 1024 * 1024;

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

/** The ranges qemu-img map reports as data, adjacent ones merged, as [start, end). */
async function dataRanges(uri: string): Promise<[number, number][]> {
  const result = await runOk("qemu-img", ["map", "--output=json", "-f", "raw", uri]);
  const entries = JSON.parse(result.stdout) as MapEntry[];
  const ranges: [number, number][] = [];
  for (const e of entries) {
    if (!e.data) continue;
    const last = ranges.at(-1);
    if (last !== undefined && last[1] === e.start) last[1] = e.start + e.length;
    else ranges.push([e.start, e.start + e.length]);
  }
  return ranges;
}

async function qemuIo(uri: string, commands: readonly string[]): Promise<RunResult> {
  const args = ["-f", "raw", "-t", "writeback", uri];
  for (const c of commands) args.push("-c", c);
  return run("qemu-io", args);
}

function expectQemuIoClean(result: RunResult): void {
  expect(result.exitCode, describeRun(result)).toBe(0);
  const output = result.stdout + result.stderr;
  expect(output, describeRun(result)).not.toMatch(/Pattern verification failed/);
  expect(output, describeRun(result)).not.toMatch(/(read|write|discard|flush|map) failed/i);
}

function count(text: string, pattern: RegExp): number {
  return text.match(pattern)?.length ?? 0;
}

describe.skipIf(!ready)(`qemu clients against ${serverKind()}`, () => {
  it("qemu-img convert -n copies an image and qemu-img compare finds it identical", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "disk.img");
    const src = join(dir, "src.img");
    await createSparseFile(image, 16 * MiB);
    // Data, a hole and data again, so convert both writes and zeroes.
    await createSparseFile(src, 16 * MiB);
    const handle = await open(src, "r+");
    await handle.write(randomBytes(3 * MiB), 0, 3 * MiB, 0);
    await handle.write(randomBytes(2 * MiB), 0, 2 * MiB, 10 * MiB);
    await handle.close();
    const server = await serveForTest({ image });

    await runOk("qemu-img", [
      "convert",
      "-n",
      "-W",
      "-m",
      "16",
      "-f",
      "raw",
      "-O",
      "raw",
      src,
      server.uri,
    ]);
    const same = await runOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", src, server.uri]);
    expect(same.stdout).toContain("Images are identical.");

    // And a difference is noticed, so the comparison itself means something.
    await runOk("qemu-io", ["-f", "raw", server.uri, "-c", "write -P 0x5a 15M 512"]);
    const differ = await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", src, server.uri]);
    expect(differ.exitCode, describeRun(differ)).toBe(1);
  });

  it("qemu-img map shows the holes and the data of a sparse file", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "sparse.img");
    await createSparseFile(image, 16 * MiB);
    const handle = await open(image, "r+");
    await handle.write(randomBytes(MiB), 0, MiB, 0);
    await handle.write(randomBytes(MiB), 0, MiB, 8 * MiB);
    await handle.close();
    const server = await serveForTest({ image });
    expect(await dataRanges(server.uri)).toEqual([
      [0, MiB],
      [8 * MiB, 9 * MiB],
    ]);
  });

  it("qemu-img map follows writes and trims on a memory export", async () => {
    const server = await serveForTest({ memory: "16M" });
    expect(await dataRanges(server.uri)).toEqual([]);
    const io = await qemuIo(server.uri, [
      "write -P 0x33 2M 1M",
      "write -P 0x44 6M 2M",
      "discard 6M 1M",
    ]);
    expectQemuIoClean(io);
    expect(await dataRanges(server.uri)).toEqual([
      [2 * MiB, 3 * MiB],
      [7 * MiB, 8 * MiB],
    ]);
  });

  it("qemu-io commands with FUA, zeroes, discard, flush and map verify their patterns", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "disk.img");
    await createSparseFile(image, 4 * MiB);
    const server = await serveForTest({ image });
    const commands = [
      "write -P 0xab 0 64k",
      "read -P 0xab 0 64k",
      "write -f -P 0xcd 64k 4k", // NBD_CMD_FLAG_FUA
      "read -P 0xcd 64k 4k",
      "write -P 0xee 128k 64k",
      "write -z 128k 64k", // WRITE_ZEROES with NO_HOLE
      "read -P 0 128k 64k",
      "write -P 0xee 256k 64k",
      "write -z -u 256k 64k", // WRITE_ZEROES, holes allowed
      "read -P 0 256k 64k",
      "write -f -z 320k 4k", // WRITE_ZEROES with FUA
      "read -P 0 320k 4k",
      "write -P 0x11 1M 1M",
      "discard 1M 1M",
      "flush",
      "map",
      "read -P 0xab 0 64k",
      "read -P 0xcd 64k 4k",
    ];
    const result = await qemuIo(server.uri, commands);
    expectQemuIoClean(result);
    expect(count(result.stdout, /^wrote \d+\/\d+ bytes at offset/gm)).toBe(8);
    expect(count(result.stdout, /^read \d+\/\d+ bytes at offset/gm)).toBe(7);
    expect(count(result.stdout, /^discard \d+\/\d+ bytes at offset/gm)).toBe(1);
    expect(result.stdout).toMatch(/allocated at offset/);

    // What qemu-io wrote is what the file holds after a clean stop.
    expect((await server.stop()).exitCode).toBe(0);
    const file = await open(image, "r");
    const head = Buffer.alloc(64 * 1024);
    await file.read(head, 0, head.length, 0);
    const zeroed = Buffer.alloc(64 * 1024);
    await file.read(zeroed, 0, zeroed.length, 128 * 1024);
    await file.close();
    expect(head.every((b) => b === 0xab)).toBe(true);
    expect(zeroed.every((b) => b === 0)).toBe(true);
  });

  it("answers FAST_ZERO on a memory export by zeroing", async () => {
    const server = await serveForTest({ memory: "4M" });
    const result = await qemuIo(server.uri, [
      "write -P 0x22 512k 64k",
      "write -z -n 512k 64k", // NBD_CMD_FLAG_FAST_ZERO
      "read -P 0 512k 64k",
    ]);
    expectQemuIoClean(result);
    expect(count(result.stdout, /^wrote \d+\/\d+ bytes at offset/gm)).toBe(2);
  });

  it("answers FAST_ZERO on a file export by zeroing or by a quick ENOTSUP", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "disk.img");
    await createSparseFile(image, 4 * MiB);
    const server = await serveForTest({ image });
    const before = await qemuIo(server.uri, ["write -P 0x22 512k 64k"]);
    expectQemuIoClean(before);
    const fast = await qemuIo(server.uri, ["write -z -n 512k 64k"]);
    if (fast.exitCode !== 0) {
      // The spec lets a server refuse a zero it cannot do quickly, with NBD_ENOTSUP,
      // and says it SHOULD NOT alter the contents when it does.
      expect(fast.stdout + fast.stderr, describeRun(fast)).toMatch(
        /write failed: Operation not supported/,
      );
      expectQemuIoClean(await qemuIo(server.uri, ["read -P 0x22 512k 64k"]));
    } else {
      expectQemuIoClean(await qemuIo(server.uri, ["read -P 0 512k 64k"]));
    }
  });
});
