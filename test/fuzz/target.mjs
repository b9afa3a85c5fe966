// The server the fuzzer attacks, as its own process (built code from dist/), so
// a crash is a process exit and its peak RSS can be read from /proc. Exports:
// "" (memory, written by the fuzz), "ro" (read-only), and one with a secret
// name that only the harness's well-behaved client uses. TLS is offered
// (--tls on) with the PSK file given, so STARTTLS gets fuzzed too.
// Usage: node target.mjs PSK-FILE SECRET-EXPORT-NAME; prints {"port": N} once listening.
import { resolve } from "node:path";

const dist = resolve(import.meta.dirname, "../../dist");
const { NbdServer } = await import(`${dist}/nbd/server/server.js`);
const { loadServerTls } = await import(`${dist}/nbd/tls.js`);
const { MemoryBackend } = await import(`${dist}/src/backend/memory.js`);
const { ReadOnlyFilter } = await import(`${dist}/src/backend/filter.js`);

const [pskFile, secret] = process.argv.slice(2);
const SIZE = 16 * 1024 * 1024;
const server = new NbdServer({
  exports: [
    { name: "", description: "fuzzed", volume: new MemoryBackend(SIZE) },
    { name: "ro", description: "read-only", volume: new ReadOnlyFilter(new MemoryBackend(SIZE)) },
    { name: secret, description: "the valid client's", volume: new MemoryBackend(SIZE) },
  ],
  tls: await loadServerTls({ mode: "on", psk: pskFile }),
});
const listener = await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 });
process.stdout.write(`${JSON.stringify({ port: listener.endpoint.port })}\n`);
const stop = async () => {
  await server.close();
  process.exit(0);
};
process.on("SIGTERM", () => void stop());
