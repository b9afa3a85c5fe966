// The servers under test. Each entry knows how to start itself on prepared images
// and hands back what the benchmark needs: the NBD URI fio connects to, the pids
// whose memory is reported, and how to stop it all again.
//
// A "server" may be several processes (a mirror is a primary plus a secondary, or
// qemu-storage-daemon plus its target): start whatever is needed, list every pid
// in `pids` (with a label each in `labels`; their peak RSS is reported per process
// and summed), and make `stop()` end all of them. The mirrored configurations are in
// mirror-servers.mjs.
//
// Entries are compared within a `group`: the entry with role "subject" is divided
// by each entry with role "reference" in the same group (peercopy ÷ nbdkit, …).
// Mirrors have role "mirror" and are compared as MIRROR_COMPARISONS lists.
import { buildProblem, peercopyArgs, peercopyMain } from "./peercopy-cli.mjs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { MIRROR_COMPARISONS, MIRROR_SERVERS } from "./mirror-servers.mjs";
import { TLS_SERVERS } from "./tls-servers.mjs";

/**
 * @typedef {object} ServerEnv
 * @property {Record<string, string>} images  image name → path of a prepared image
 * @property {string} workDir  a directory of this server's own (pid files, sockets)
 * @property {string} repoRoot
 * @property {() => Promise<number>} freePort
 * @property {(cmd: string, args: string[], options?: { name?: string }) =>
 *   import("./proc.mjs").TrackedProcess} spawn
 *
 * @typedef {object} RunningServer
 * @property {string} uri  what fio's --uri gets
 * @property {number[]} pids  every process whose peak RSS counts
 * @property {string[]} [labels]  one per pid ("primary", "secondary", …)
 * @property {string[]} commands  the command lines, recorded with the results
 * @property {() => Promise<void>} stop
 * @property {Record<string, number>} [startInfo]  recorded with the run that started it
 *   (initialCopySeconds)
 * @property {() => boolean} [alive]  false once a kept server can no longer be used
 * @property {() => Promise<void>} [beforeRun]  wait until ready for a run (pair in sync)
 * @property {() => Promise<import("./mirror-servers.mjs").MirrorReading>} [afterRun]
 *   read the copy's lag right after fio, then wait until it has caught up
 *
 * @typedef {object} ServerDef
 * @property {string} name
 * @property {string} group
 * @property {"subject" | "reference" | "mirror"} role
 * @property {string} description  one line for the results page
 * @property {string[]} images  the images to prepare (same size and fill for all)
 * @property {string[]} tools  external programs that must be on PATH
 * @property {boolean} [keep]  start once, keep for every later run (see runner.mjs)
 * @property {boolean} [mirror]  runs the --mirror-workloads only
 * @property {(env: { repoRoot: string }) => string | undefined} [check]
 *   an error message if the server cannot run here
 * @property {(env: ServerEnv) => Promise<RunningServer>} start
 */

const START_TIMEOUT_MS = 15_000;

export { peercopyMain };

/** @type {ServerDef[]} */
const PLAIN_SERVERS = [
  {
    name: "peercopy",
    group: "serve",
    role: "subject",
    description: "peercopy serve (this repository's build)",
    images: ["disk"],
    tools: [],
    check: ({ repoRoot }) => buildProblem(repoRoot),
    async start(env) {
      const port = await env.freePort();
      const proc = env.spawn(
        process.execPath,
        peercopyArgs(peercopyMain(env.repoRoot), [
          "serve",
          env.images.disk,
          "--listen",
          `127.0.0.1:${port}`,
        ]),
        { name: "peercopy serve" },
      );
      const line = await proc.waitForLine((l) => l.includes('"msg":"listening"'), START_TIMEOUT_MS);
      const uri = parseUri(line) ?? `nbd://127.0.0.1:${port}/`;
      return { uri, pids: [proc.pid], commands: [proc.command], stop: () => proc.stop() };
    },
  },
  {
    name: "nbdkit",
    group: "serve",
    role: "reference",
    description: "nbdkit file plugin (default thread model and 16 threads, page cache)",
    images: ["disk"],
    tools: ["nbdkit"],
    async start(env) {
      const port = await env.freePort();
      const pidFile = join(env.workDir, `nbdkit-${port}.pid`);
      // -P: nbdkit writes the pid file once it accepts connections.
      const proc = env.spawn(
        "nbdkit",
        ["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p", String(port), "-P", pidFile].concat([
          "file",
          env.images.disk,
        ]),
        { name: "nbdkit" },
      );
      await proc.waitForFile(pidFile, START_TIMEOUT_MS);
      return {
        uri: `nbd://127.0.0.1:${port}/`,
        pids: [proc.pid],
        commands: [proc.command],
        stop: () => proc.stop().then(() => rm(pidFile, { force: true })),
      };
    },
  },
  {
    name: "qemu-nbd",
    group: "serve",
    role: "reference",
    description:
      "qemu-nbd, raw, page cache (--cache=writeback) and thread-pool I/O (--aio=threads)",
    images: ["disk"],
    tools: ["qemu-nbd"],
    async start(env) {
      const port = await env.freePort();
      const pidFile = join(env.workDir, `qemu-nbd-${port}.pid`);
      // --cache=writeback and --aio=threads are qemu-nbd's defaults, spelled out: they
      // match the other two servers, which go through the page cache from a thread
      // pool. (--aio=native needs O_DIRECT, --cache=none; io_uring would be a
      // different I/O path from the others.) The pid file is written when listening.
      const proc = env.spawn(
        "qemu-nbd",
        ["-f", "raw", "-t", "-b", "127.0.0.1", "-p", String(port)]
          .concat(["--cache=writeback", "--aio=threads", `--pid-file=${pidFile}`])
          .concat([env.images.disk]),
        { name: "qemu-nbd" },
      );
      await proc.waitForFile(pidFile, START_TIMEOUT_MS);
      return {
        uri: `nbd://127.0.0.1:${port}/`,
        pids: [proc.pid],
        commands: [proc.command],
        stop: () => proc.stop().then(() => rm(pidFile, { force: true })),
      };
    },
  },
];

/** @type {ServerDef[]} */
export const SERVERS = [...PLAIN_SERVERS, ...TLS_SERVERS, ...MIRROR_SERVERS];

export { MIRROR_COMPARISONS };

/** @param {string} line a pino JSON log line */
function parseUri(line) {
  try {
    const record = JSON.parse(line);
    return typeof record.uri === "string" ? record.uri : undefined;
  } catch {
    return undefined;
  }
}
