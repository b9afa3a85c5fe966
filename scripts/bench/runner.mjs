// One fio run on one server, and the servers that are kept running between runs.
//
// A plain server is started afresh for every run and stopped after it. A server whose
// entry says `keep: true` (the mirrors, whose initial copy is long) is started at its
// first run of a workload and kept for that workload's later runs; before each run its
// peak RSS is reset (so the peak is the run's own) and its CPU time is read as a
// difference. It is started afresh when the workload changes (so no run's peak RSS is
// memory kept from another workload), and after a failed run or when one of its
// processes died.
import { open } from "node:fs/promises";
import { loadavg } from "node:os";
import { runFio } from "./fio.mjs";
import { cpuSeconds, freePort, peakRss, resetPeakRss, spawnTracked } from "./proc.mjs";

const START_ATTEMPTS = 3;

/**
 * @typedef {object} Instance
 * @property {import("./servers.mjs").RunningServer} running
 * @property {import("./proc.mjs").TrackedProcess[]} spawned
 * @property {string} workload  the workload it was started for
 */

export class ServerPool {
  /** @param {string} repoRoot */
  constructor(repoRoot) {
    this.repoRoot = repoRoot;
    /** @type {Map<string, Instance>} */
    this.kept = new Map();
    this.stopping = false;
  }

  /**
   * Start a server (retrying: most failures are a port taken between picking and
   * binding it), or hand back the kept instance if it is still healthy.
   * @returns {Promise<Instance & { fresh: boolean, startSeconds: number }>}
   */
  async acquire(server, image, workloadName) {
    const kept = this.kept.get(server.name);
    if (kept !== undefined) {
      if (kept.workload === workloadName && kept.running.alive?.() !== false)
        return { ...kept, fresh: false, startSeconds: 0 };
      await this.discard(server);
      // Its last run's writes may still be in the page cache.
      await syncImages(image);
    }
    const began = Date.now();
    for (let attempt = 1; ; attempt++) {
      const spawned = [];
      const env = {
        images: image.paths,
        workDir: image.dir,
        repoRoot: this.repoRoot,
        freePort,
        spawn: (cmd, args, options) => {
          const proc = spawnTracked(cmd, args, options);
          spawned.push(proc);
          return proc;
        },
      };
      try {
        const running = await server.start(env);
        const instance = { running, spawned, workload: workloadName };
        if (server.keep === true) this.kept.set(server.name, instance);
        return { ...instance, fresh: true, startSeconds: (Date.now() - began) / 1000 };
      } catch (err) {
        await Promise.all(spawned.map((p) => p.stop(2000)));
        if (attempt >= START_ATTEMPTS || this.stopping) throw err;
      }
    }
  }

  /** After a run: a plain server is stopped; a kept one stays unless the run failed. */
  async release(server, instance, failed) {
    if (server.keep === true && !failed && !this.stopping) return;
    if (server.keep === true) this.kept.delete(server.name);
    await stopInstance(instance);
  }

  async discard(server) {
    const kept = this.kept.get(server.name);
    this.kept.delete(server.name);
    if (kept !== undefined) await stopInstance(kept);
  }

  async closeAll() {
    this.stopping = true;
    const all = [...this.kept.values()];
    this.kept.clear();
    await Promise.all(all.map(stopInstance));
  }
}

async function stopInstance({ running, spawned }) {
  await running.stop().catch(() => undefined);
  await Promise.all(spawned.map((p) => p.stop(5000)));
}

/**
 * One fio run; errors are recorded in the result, not thrown.
 * @param {{ rep: number, workload: object, server: object }} step
 * @param {{ dir: string, paths: Record<string, string> }} image
 * @param {{ size: number, runtime: number, ramp: number }} opts
 * @param {ServerPool} pool
 * @param {Map<string, string[]>} commands  filled with each server's command lines
 */
export async function runOne({ rep, workload, server }, image, opts, pool, commands) {
  const record = {
    rep,
    workload: workload.name,
    server: server.name,
    loadAverage1m: Math.round(loadavg()[0] * 100) / 100,
  };
  let instance;
  let failed = false;
  try {
    instance = await pool.acquire(server, image, workload.name);
    const { running } = instance;
    if (instance.fresh) {
      record.startSeconds = instance.startSeconds;
      if (running.startInfo !== undefined) Object.assign(record, running.startInfo);
      // The initial copy dirtied the whole secondary: write it back before measuring.
      if (server.keep === true) await syncImages(image);
    }
    commands.set(server.name, running.commands);
    await running.beforeRun?.();
    const kept = server.keep === true;
    if (kept) await Promise.all(running.pids.map(resetPeakRss));
    const cpuBefore = kept ? await Promise.all(running.pids.map(cpuSeconds)) : [];
    const fio = await runFio(workload, running.uri, opts);
    const rss = await Promise.all(running.pids.map(peakRss));
    const cpu = await Promise.all(running.pids.map(cpuSeconds));
    const labels =
      running.labels ?? running.pids.map((_, i) => (i === 0 ? "server" : `process ${i + 1}`));
    Object.assign(record, fio, {
      rssMiB: rss.reduce((a, b) => a + b, 0) / 2 ** 20,
      rssMiBByProcess: Object.fromEntries(labels.map((label, i) => [label, rss[i] / 2 ** 20])),
      cpuSeconds: cpu.reduce((a, b, i) => a + b - (cpuBefore[i] ?? 0), 0),
      cpuSecondsByProcess: Object.fromEntries(
        labels.map((label, i) => [label, cpu[i] - (cpuBefore[i] ?? 0)]),
      ),
    });
    if (running.afterRun !== undefined) record.mirror = await running.afterRun();
  } catch (err) {
    failed = true;
    record.error = err instanceof Error ? err.message : String(err);
  } finally {
    if (instance !== undefined) await pool.release(server, instance, failed);
    // Write back this server's dirty pages now, not during the next server's run.
    const began = Date.now();
    await syncImages(image);
    record.syncMs = Date.now() - began;
  }
  return record;
}

async function syncImages(image) {
  for (const path of Object.values(image.paths)) await syncFile(path).catch(() => undefined);
}

async function syncFile(path) {
  const fh = await open(path, "r+");
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
}
