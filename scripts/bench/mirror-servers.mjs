// The mirrored configurations: a host writes to a primary that copies every write to
// a second volume. Each is several processes, started once and kept for the whole
// benchmark (`keep: true`): the initial copy of a pre-filled image takes seconds to
// minutes, far longer than a fio run, so it is paid once per configuration rather than
// once per run. Before every run the pair must be in sync again (beforeRun); right
// after fio, afterRun reads how far the copy lags and waits until it has caught up,
// so that no run starts while a previous run's backlog is still draining.
/* global AbortSignal -- Node.js 20 has it; the shared lint config lists a few globals only */
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { buildProblem, peercopyArgs, peercopyMain } from "./peercopy-cli.mjs";
import { sleep } from "./proc.mjs";
import { qmpConnect } from "./qmp.mjs";

/** The initial copy of 1 GiB takes 2–20 s here; ten minutes is room for a slow disk. */
export const INITIAL_COPY_TIMEOUT_MS = 600_000;
/** An unbounded async backlog of a few GiB drains in well under this. */
const DRAIN_TIMEOUT_MS = 300_000;
const START_TIMEOUT_MS = 15_000;
const POLL_MS = 100;

/**
 * @typedef {object} MirrorReading  the state of the copy right after fio ended
 * @property {string} state  peercopy's pair state, or the mirror job's status
 * @property {number} lagBytes  bytes the secondary does not have yet
 * @property {number | null} lagMs  age of the oldest write it does not have (peercopy)
 * @property {number | null} lagWrites
 * @property {string} bound  the configured lag bound, "none" if unbounded
 * @property {boolean} underBound  the run ended in sync or within its bound, not suspended
 * @property {number} drainSeconds  how long it took afterwards until the copy caught up
 */

/**
 * @param {object} p
 * @param {string} p.name
 * @param {"sync" | "async"} p.mode
 * @param {"peercopy" | "nbdkit"} p.secondary
 * @param {string} [p.maxLag]  async: --max-lag (the lag bound the block policy holds)
 * @returns {import("./servers.mjs").ServerDef}
 */
function peercopyPair({ name, mode, secondary, maxLag }) {
  const target =
    secondary === "peercopy" ? "a peercopy secondary (ordered replication export)" : "nbdkit file";
  return {
    name,
    group: `mirror-${mode}`,
    role: "mirror",
    keep: true,
    mirror: true,
    description: `peercopy primary --mode ${mode}${maxLag === undefined ? "" : ` --max-lag ${maxLag}`} mirroring to ${target}`,
    images: ["primary", "secondary"],
    tools: secondary === "nbdkit" ? ["nbdkit"] : [],
    check: ({ repoRoot }) => buildProblem(repoRoot),
    async start(env) {
      const main = peercopyMain(env.repoRoot);
      const [hostPort, remotePort, adminPort] = [
        await env.freePort(),
        await env.freePort(),
        await env.freePort(),
      ];
      const second =
        secondary === "peercopy"
          ? await startPeercopySecondary(env, main, remotePort)
          : await startNbdkit(env, env.images.secondary, remotePort, "nbdkit secondary");
      const remote =
        secondary === "peercopy"
          ? `nbd://127.0.0.1:${remotePort}/replication`
          : `nbd://127.0.0.1:${remotePort}/`;
      const began = Date.now();
      const primary = env.spawn(
        process.execPath,
        peercopyArgs(main, [
          "primary",
          env.images.primary,
          "--listen",
          `127.0.0.1:${hostPort}`,
        ]).concat([
          "--remote",
          remote,
          "--mode",
          mode,
          "--admin",
          `127.0.0.1:${adminPort}`,
          ...(maxLag === undefined ? [] : ["--max-lag", maxLag]),
        ]),
        { name: `peercopy primary (${mode})` },
      );
      await primary.waitForLine((l) => l.includes('"msg":"admin API"'), START_TIMEOUT_MS);
      const statusUrl = `http://127.0.0.1:${adminPort}/status`;
      const status = () => getStatus(statusUrl);
      const inSync = async () => {
        const s = await status();
        return s.pairState === "full-duplex" && s.lag?.bytes === 0 && s.link?.queued === 0;
      };
      const procs = [primary, second.proc];
      await waitUntil(inSync, INITIAL_COPY_TIMEOUT_MS, "the initial copy (full-duplex)", procs);
      return {
        uri: `nbd://127.0.0.1:${hostPort}/`,
        pids: [primary.pid, second.proc.pid],
        labels: ["primary", secondary === "peercopy" ? "secondary" : "nbdkit"],
        commands: [second.proc.command, primary.command],
        startInfo: { initialCopySeconds: (Date.now() - began) / 1000 },
        alive: () => procs.every((p) => p.running()),
        async beforeRun() {
          await waitUntil(inSync, DRAIN_TIMEOUT_MS, "full-duplex with no lag", procs);
        },
        async afterRun() {
          const s = await status();
          const lag = s.lag ?? {};
          const drainBegan = Date.now();
          await waitUntil(inSync, DRAIN_TIMEOUT_MS, "the link to drain", procs);
          const limits = [
            lag.maxBytes === null ? "" : `${lag.maxBytes} B`,
            lag.maxMs === null ? "" : `${lag.maxMs} ms`,
          ].filter(Boolean);
          return {
            state: s.pairState,
            lagBytes: lag.bytes,
            lagMs: lag.ms,
            lagWrites: lag.writes,
            bound: mode === "sync" ? "sync" : limits.length === 0 ? "none" : limits.join(", "),
            underBound:
              mode === "sync"
                ? s.pairState === "full-duplex" && lag.bytes === 0
                : s.pairState !== "suspended" &&
                  (lag.maxBytes === null || lag.bytes <= lag.maxBytes) &&
                  (lag.maxMs === null || lag.ms <= lag.maxMs),
            drainSeconds: (Date.now() - drainBegan) / 1000,
          };
        },
        async stop() {
          await primary.stop();
          await second.stop();
        },
      };
    },
  };
}

/**
 * @param {object} p
 * @param {string} p.name
 * @param {"sync" | "async"} p.mode
 * @returns {import("./servers.mjs").ServerDef}
 */
function qsdMirror({ name, mode }) {
  const copyMode = mode === "sync" ? "write-blocking" : "background";
  return {
    name,
    group: `mirror-${mode}`,
    role: "mirror",
    keep: true,
    mirror: true,
    description: `qemu-storage-daemon exporting the image, blockdev-mirror copy-mode=${copyMode} to nbdkit file`,
    images: ["primary", "secondary"],
    tools: ["qemu-storage-daemon", "nbdkit"],
    async start(env) {
      const [hostPort, remotePort] = [await env.freePort(), await env.freePort()];
      const target = await startNbdkit(env, env.images.secondary, remotePort, "nbdkit target");
      const qmpPath = join(env.workDir, `qmp-${hostPort}.sock`);
      const pidFile = join(env.workDir, `qsd-${hostPort}.pid`);
      await rm(qmpPath, { force: true });
      const qsd = env.spawn(
        "qemu-storage-daemon",
        [
          "--blockdev",
          `driver=file,node-name=file0,filename=${env.images.primary}`,
          "--blockdev",
          "driver=raw,node-name=fmt0,file=file0",
          "--blockdev",
          `driver=nbd,node-name=target0,server.type=inet,server.host=127.0.0.1,server.port=${remotePort}`,
          "--nbd-server",
          `addr.type=inet,addr.host=127.0.0.1,addr.port=${hostPort}`,
          // The export is attached to fmt0; the mirror job inserts its filter above
          // fmt0 and moves fmt0's parents (this export) onto the filter, so host
          // writes pass through the mirror (mirror-check.mjs compares the images).
          "--export",
          "type=nbd,id=exp0,node-name=fmt0,name=,writable=on",
          "--chardev",
          `socket,path=${qmpPath},server=on,wait=off,id=qmp0`,
          "--monitor",
          "chardev=qmp0",
          "--pidfile",
          pidFile,
        ],
        { name: "qemu-storage-daemon" },
      );
      const stopAll = async () => {
        qmp?.close();
        await qsd.stop();
        await target.stop();
        await rm(pidFile, { force: true });
      };
      let qmp;
      try {
        await qsd.waitForFile(pidFile, START_TIMEOUT_MS);
        qmp = await qmpConnect(qmpPath, START_TIMEOUT_MS);
        const began = Date.now();
        await qmp.execute("blockdev-mirror", {
          "job-id": "mirror0",
          device: "fmt0",
          target: "target0",
          sync: "full",
          "copy-mode": copyMode,
        });
        await qmp.waitForEvent(
          (e) => e.event === "BLOCK_JOB_READY" && e.data?.device === "mirror0",
          INITIAL_COPY_TIMEOUT_MS,
        );
        const initialCopySeconds = (Date.now() - began) / 1000;
        const job = async () => {
          const jobs = await qmp.execute("query-block-jobs");
          const found = jobs.find((j) => j.device === "mirror0");
          if (found === undefined) throw new Error("the mirror job is gone");
          return found;
        };
        const inSync = async () => {
          const j = await job();
          return j.ready && j.offset === j.len;
        };
        const procs = [qsd, target.proc];
        return {
          uri: `nbd://127.0.0.1:${hostPort}/`,
          pids: [qsd.pid, target.proc.pid],
          labels: ["qsd", "nbdkit"],
          commands: [target.proc.command, qsd.command],
          startInfo: { initialCopySeconds },
          alive: () => procs.every((p) => p.running()) && !qmp.closed,
          async beforeRun() {
            await waitUntil(
              inSync,
              DRAIN_TIMEOUT_MS,
              "the mirror job to be ready and caught up",
              procs,
            );
          },
          async afterRun() {
            const j = await job();
            const drainBegan = Date.now();
            await waitUntil(inSync, DRAIN_TIMEOUT_MS, "the mirror job to catch up", procs);
            return {
              state: j.status,
              lagBytes: j.len - j.offset,
              lagMs: null,
              lagWrites: null,
              bound: mode === "sync" ? "sync" : "none",
              underBound: j.ready && j["io-status"] === "ok",
              drainSeconds: (Date.now() - drainBegan) / 1000,
            };
          },
          stop: stopAll,
        };
      } catch (err) {
        await stopAll();
        throw err;
      }
    },
  };
}

async function startPeercopySecondary(env, main, port) {
  const proc = env.spawn(
    process.execPath,
    peercopyArgs(main, ["secondary", env.images.secondary, "--listen", `127.0.0.1:${port}`]),
    { name: "peercopy secondary" },
  );
  await proc.waitForLine((l) => l.includes('"msg":"listening"'), START_TIMEOUT_MS);
  return { proc, stop: () => proc.stop() };
}

async function startNbdkit(env, image, port, name) {
  const pidFile = join(env.workDir, `nbdkit-${port}.pid`);
  const proc = env.spawn(
    "nbdkit",
    [
      "-f",
      "--exit-with-parent",
      "-p",
      String(port),
      "-i",
      "127.0.0.1",
      "-P",
      pidFile,
      "file",
      image,
    ],
    { name },
  );
  await proc.waitForFile(pidFile, START_TIMEOUT_MS);
  return { proc, stop: () => proc.stop().then(() => rm(pidFile, { force: true })) };
}

async function getStatus(url) {
  const response = await fetch(url, { signal: AbortSignal.timeout(5000) });
  if (!response.ok) throw new Error(`GET ${url}: HTTP ${response.status}`);
  return response.json();
}

/** Poll until check() is true; fail early if one of the processes exits. */
async function waitUntil(check, timeoutMs, what, procs) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    const dead = procs.find((p) => !p.running());
    if (dead !== undefined)
      throw new Error(`${dead.name} exited while waiting for ${what}\n${dead.tail()}`);
    try {
      if (await check()) return;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline)
      throw new Error(
        `still waiting for ${what} after ${timeoutMs / 1000} s` +
          (lastError === undefined ? "" : ` (last error: ${lastError.message})`),
      );
    await sleep(POLL_MS);
  }
}

/** @type {import("./servers.mjs").ServerDef[]} */
export const MIRROR_SERVERS = [
  peercopyPair({ name: "peercopy-sync", mode: "sync", secondary: "peercopy" }),
  // Async with the lag bound a sizing guide would start from: 64 MiB, held by blocking hosts.
  peercopyPair({ name: "peercopy-async", mode: "async", secondary: "peercopy", maxLag: "64M" }),
  peercopyPair({ name: "peercopy-sync-nbdkit", mode: "sync", secondary: "nbdkit" }),
  peercopyPair({
    name: "peercopy-async-nbdkit",
    mode: "async",
    secondary: "nbdkit",
    maxLag: "64M",
  }),
  qsdMirror({ name: "qsd-mirror-sync", mode: "sync" }),
  qsdMirror({ name: "qsd-mirror-async", mode: "async" }),
];

/**
 * The mirror comparisons shown in their own table: subject ÷ reference, median ÷ median.
 * Each is kept only when both servers are in the run.
 */
export const MIRROR_COMPARISONS = [
  { subject: "peercopy-sync", reference: "qsd-mirror-sync" },
  { subject: "peercopy-async", reference: "qsd-mirror-async" },
  { subject: "peercopy-sync-nbdkit", reference: "qsd-mirror-sync" },
  { subject: "peercopy-async-nbdkit", reference: "qsd-mirror-async" },
  { subject: "peercopy-sync", reference: "peercopy" },
  { subject: "peercopy-async", reference: "peercopy" },
];
