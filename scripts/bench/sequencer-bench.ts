// Sequencer throughput: subtasks dispatched per second when completions arrive in
// random order, interleaved across the tasks in flight.
//
// Each cell runs rounds of K tasks of T tracks: begin the K tasks, then add their
// K*T subtasks in a random order drawn before the clock starts. Subtask objects are
// allocated in arrival order, as a completion handler would have just touched them.
// The sequencer is configured as the mirror uses it: performance.now as its clock,
// with the default wait-time sampling. A cell's result is the median of RUNS runs in
// subtasks per CPU-second; the last line is the worst cell of the grid.
//
//   npm run bench:sequencer

import { cpus } from "node:os";
import { performance } from "node:perf_hooks";
import { Subtask, SubtaskKind } from "../../src/sequencer/plan.js";
import { Sequencer, type SequencerOptions } from "../../src/sequencer/sequencer.js";

const TRACKS_PER_TASK = [1, 16, 512] as const;
const TASKS_IN_FLIGHT = [1, 64, 1024] as const;
const SUBTASKS_PER_RUN = 1 << 20;
const RUNS = 7;

interface Workload {
  readonly tasksPerRound: number;
  readonly tracks: number;
  readonly rounds: number;
  /** Per round, the task ids in begin order. */
  readonly taskIds: Int32Array;
  /** All subtasks, round after round, each round in its shuffled arrival order. */
  readonly arrivals: Subtask[];
}

/** Small, seeded PRNG so every run of the benchmark shuffles the same way. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function prepare(tracks: number, tasksPerRound: number, seed: number): Workload {
  const perRound = tracks * tasksPerRound;
  const rounds = Math.max(1, Math.ceil(SUBTASKS_PER_RUN / perRound));
  const random = mulberry32(seed);
  const taskIds = new Int32Array(rounds * tasksPerRound);
  const arrivals: Subtask[] = [];
  const order = new Int32Array(perRound);
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < tasksPerRound; k++)
      taskIds[r * tasksPerRound + k] = r * tasksPerRound + k + 1;
    for (let i = 0; i < perRound; i++) order[i] = i;
    for (let i = perRound - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      const tmp = order[i]!;
      order[i] = order[j]!;
      order[j] = tmp;
    }
    for (let i = 0; i < perRound; i++) {
      const slot = order[i]!;
      const task = r * tasksPerRound + Math.floor(slot / tracks);
      const seq = task * tracks + (slot % tracks);
      arrivals.push(
        new Subtask(task + 1, seq, SubtaskKind.WRITE, seq * 65536, 65536, 0, undefined, 0),
      );
    }
  }
  return { tasksPerRound, tracks, rounds, taskIds, arrivals };
}

type Clocking = Pick<SequencerOptions<Subtask>, "now" | "waitSampling">;

/** The mirror's configuration: performance.now, default sampling. */
const MIRROR: Clocking = { now: () => performance.now() };

/**
 * One run; returns subtasks dispatched per CPU-second of this process (user plus
 * system, garbage collector threads included), which stays meaningful when other
 * work shares the machine, where wall time would count time spent descheduled.
 */
function run(w: Workload, clocking: Clocking): number {
  let dispatched = 0;
  const seq = new Sequencer<Subtask>({
    dispatch: () => {
      dispatched++;
    },
    ...clocking,
  });
  const { tasksPerRound, tracks, rounds, taskIds, arrivals } = w;
  const perRound = tracks * tasksPerRound;
  const cpu0 = process.cpuUsage();
  let a = 0;
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < tasksPerRound; k++) {
      const id = taskIds[r * tasksPerRound + k]!;
      seq.begin(id, (id - 1) * tracks, tracks);
    }
    for (let end = a + perRound; a < end; a++) seq.add(arrivals[a]!);
  }
  const cpu = process.cpuUsage(cpu0);
  const seconds = (cpu.user + cpu.system) / 1e6;
  if (dispatched !== arrivals.length || seq.tasksActive !== 0 || seq.subtasksQueued !== 0) {
    throw new Error(`bench run inconsistent: dispatched ${dispatched} of ${arrivals.length}`);
  }
  return dispatched / seconds;
}

function cell(w: Workload, clocking: Clocking): number {
  const rates: number[] = [];
  for (let i = 0; i < RUNS; i++) rates.push(run(w, clocking));
  return median(rates);
}

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.floor(s.length / 2)]!;
}

function fmt(rate: number): string {
  return `${(rate / 1e6).toFixed(1)} M/s`;
}

function main(): void {
  console.log(
    `sequencer benchmark: node ${process.version}, ${cpus()[0]?.model ?? "unknown cpu"}, ` +
      `${SUBTASKS_PER_RUN} subtasks per run, median of ${RUNS} runs`,
  );
  const results = new Map<string, number>();
  // Warm every shape up once so the first cell does not pay for compilation.
  for (const t of TRACKS_PER_TASK) for (const k of TASKS_IN_FLIGHT) run(prepare(t, k, 1), MIRROR);
  let worstCell = { tracks: 0, inFlight: 0, rate: Infinity };
  for (const t of TRACKS_PER_TASK) {
    for (const k of TASKS_IN_FLIGHT) {
      const rate = cell(prepare(t, k, 0x5eed + t * 4099 + k), MIRROR);
      results.set(`${t}x${k}`, rate);
      if (rate < worstCell.rate) worstCell = { tracks: t, inFlight: k, rate };
    }
  }

  const header = ["tracks/task \\ tasks in flight", ...TASKS_IN_FLIGHT.map(String)];
  const rows = TRACKS_PER_TASK.map((t) => [
    String(t),
    ...TASKS_IN_FLIGHT.map((k) => fmt(results.get(`${t}x${k}`)!)),
  ]);
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
  const line = (cells: string[]): string =>
    "| " + cells.map((x, c) => x.padStart(widths[c]!)).join(" | ") + " |";
  console.log(line(header));
  console.log("|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|");
  for (const r of rows) console.log(line(r));

  const all = [...results.values()];
  const worst = Math.min(...all);
  const best = Math.max(...all);
  console.log(`best/worst ratio: ${(best / worst).toFixed(2)}`);

  // What the clock costs, on the worst cell: none at all, and every subtask timed.
  const w = prepare(worstCell.tracks, worstCell.inFlight, 0x5eed);
  const where = `${worstCell.tracks} tracks x ${worstCell.inFlight} tasks`;
  console.log(`${where}, no clock: ${fmt(cell(w, {}))}`);
  console.log(`${where}, every subtask timed: ${fmt(cell(w, { ...MIRROR, waitSampling: 1 }))}`);
  console.log(`sequencer: ${Math.round(worst)} subtasks/s`);
}

main();
