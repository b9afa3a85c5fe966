// Records real NBD sessions for the fuzzer's corpus: nbdinfo, qemu-img, qemu-io
// and fio talk to a peercopy server through a recording proxy, and each
// connection's bytes (client to server, server to client) are written to
// test/fuzz/corpus/NAME-N.c2s.bin and .s2c.bin. Run: npm run fuzz:capture
import { mkdir, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { join } from "node:path";
import { execa } from "execa";
import { NbdServer } from "../../nbd/server/server.js";
import { MemoryBackend } from "../../src/backend/memory.js";

const CORPUS = join(import.meta.dirname, "corpus");
const SIZE = 16 * 1024 * 1024;

interface Recorded {
  readonly c2s: Buffer[];
  readonly s2c: Buffer[];
}

async function main(): Promise<void> {
  const server = new NbdServer({
    exports: [{ name: "", description: "fuzz corpus", volume: new MemoryBackend(SIZE) }],
  });
  const backend = await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 });
  const backendPort = backend.endpoint.kind === "tcp" ? backend.endpoint.port : 0;
  let current: Recorded[] = [];
  const proxy = net.createServer((down) => {
    const rec: Recorded = { c2s: [], s2c: [] };
    current.push(rec);
    const up = net.connect(backendPort, "127.0.0.1");
    down.on("data", (c: Buffer) => {
      rec.c2s.push(Buffer.from(c));
      up.write(c);
    });
    up.on("data", (c: Buffer) => {
      rec.s2c.push(Buffer.from(c));
      down.write(c);
    });
    down.on("close", () => up.destroy());
    up.on("close", () => down.destroy());
    down.on("error", () => undefined);
    up.on("error", () => undefined);
  });
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
  const address = proxy.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  const uri = `nbd://127.0.0.1:${port}/`;

  const sessions: [string, string, string[]][] = [
    ["nbdinfo", "nbdinfo", [uri]],
    ["nbdinfo-list", "nbdinfo", ["--list", uri]],
    ["nbdinfo-map", "nbdinfo", ["--map", uri]],
    ["qemu-img-info", "qemu-img", ["info", "-f", "raw", uri]],
    [
      "qemu-io",
      "qemu-io",
      [
        ...["-f", "raw", uri],
        ...["-c", "write -P 0x5a 0 8k", "-c", "read -P 0x5a 0 8k", "-c", "write -z 8k 4k"],
        ...["-c", "discard 12k 4k", "-c", "flush"],
      ],
    ],
    [
      "fio",
      "fio",
      [
        "--name=corpus",
        "--ioengine=nbd",
        `--uri=${uri}`,
        "--rw=randrw",
        "--bs=4k",
        "--iodepth=4",
        "--size=1M",
        "--number_ios=16",
        "--randseed=1",
      ],
    ],
  ];
  await rm(CORPUS, { recursive: true, force: true });
  await mkdir(CORPUS, { recursive: true });
  for (const [name, tool, args] of sessions) {
    current = [];
    const r = await execa(tool, args, { reject: false, timeout: 60_000, cwd: CORPUS });
    if (r.exitCode !== 0) throw new Error(`${tool} ${args.join(" ")}: ${r.stderr}`);
    await new Promise((res) => setTimeout(res, 200));
    let i = 0;
    for (const rec of current) {
      const c2s = Buffer.concat(rec.c2s);
      if (c2s.length === 0) continue;
      await writeFile(join(CORPUS, `${name}-${i}.c2s.bin`), c2s);
      await writeFile(join(CORPUS, `${name}-${i}.s2c.bin`), Buffer.concat(rec.s2c));
      console.log(
        `${name}-${i}: ${c2s.length} bytes sent, ${Buffer.concat(rec.s2c).length} received`,
      );
      i++;
    }
  }
  proxy.close();
  await server.close();
}

await main();
