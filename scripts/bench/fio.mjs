// The fio workloads and how one fio run is read. fio drives the server through
// libnbd (ioengine=nbd): one connection, requests kept in flight up to iodepth.
import { indent, spawnTracked } from "./proc.mjs";

/**
 * @typedef {object} Workload
 * @property {string} name
 * @property {string} label
 * @property {"randwrite" | "randread" | "write" | "read"} rw
 * @property {string} bs
 * @property {number} iodepth
 * @property {boolean} [headline]  run by the mirror entries by default
 */

/** @type {Workload[]} */
export const WORKLOADS = [
  {
    name: "randwrite-4k-qd32",
    label: "4k random write QD32",
    rw: "randwrite",
    bs: "4k",
    iodepth: 32,
    headline: true,
  },
  { name: "randread-4k-qd32", label: "4k random read QD32", rw: "randread", bs: "4k", iodepth: 32 },
  {
    name: "seqwrite-1m-qd8",
    label: "1 MiB seq write QD8",
    rw: "write",
    bs: "1m",
    iodepth: 8,
    headline: true,
  },
  { name: "randwrite-4k-qd1", label: "4k random write QD1", rw: "randwrite", bs: "4k", iodepth: 1 },
];

/**
 * @typedef {object} FioResult
 * @property {number} iops
 * @property {number} mibps
 * @property {number} p50Us  completion latency percentiles, µs
 * @property {number} p99Us
 * @property {number} p999Us
 * @property {number} meanUs
 * @property {number} latP50Us  total latency (submission to completion) p50, µs; NaN
 *   unless fio ran with --lat_percentiles=1
 * @property {number} ios  requests completed in the measured window
 */

/**
 * @param {Workload} workload
 * @param {string} uri
 * @param {{ size: number, runtime: number, ramp: number, extra?: string[] }} options
 */
export function fioArgs(workload, uri, { size, runtime, ramp, extra = [] }) {
  return [
    `--name=${workload.name}`,
    "--ioengine=nbd",
    `--uri=${uri}`,
    `--rw=${workload.rw}`,
    `--bs=${workload.bs}`,
    `--iodepth=${workload.iodepth}`,
    `--size=${size}`,
    "--time_based",
    `--runtime=${runtime}`,
    // The ramp keeps connection setup and the first requests out of the numbers.
    `--ramp_time=${ramp}`,
    // fio's default seed: every server sees the same sequence of offsets.
    "--randrepeat=1",
    // Without the map fio spends no CPU tracking which blocks it touched (the
    // machine has few cores, and fio shares them with the server).
    "--norandommap",
    "--percentile_list=50:99:99.9",
    "--output-format=json",
    ...extra,
  ];
}

/**
 * Run fio once and return its numbers, or throw with fio's own words.
 * @param {Workload} workload
 * @param {string} uri
 * @param {{ size: number, runtime: number, ramp: number, extra?: string[] }} options
 * @returns {Promise<FioResult>}
 */
export async function runFio(workload, uri, options) {
  const proc = spawnTracked("fio", fioArgs(workload, uri, options), {
    name: "fio",
    keepStdout: true,
  });
  const limitMs = (options.runtime + options.ramp + 30) * 1000;
  const timer = setTimeout(() => proc.kill("SIGKILL"), limitMs);
  const { code, signal, error } = await proc.exited;
  clearTimeout(timer);
  const failure = (what) =>
    new Error(`fio ${what}\n  command: ${proc.command}\n  output:\n${indent(proc.tail())}`);
  if (error !== undefined) throw failure(`could not start: ${error.message}`);
  if (code !== 0) throw failure(signal === null ? `exited with ${code}` : `killed by ${signal}`);
  const report = parseFioJson(proc.stdout());
  if (report === undefined) throw failure("printed no JSON report");
  return readJob(report, workload, failure);
}

/**
 * fio's JSON report, without the "fio: connected to NBD server" lines (and any other
 * notes) fio prints on stdout around it.
 * @param {string} stdout
 */
export function parseFioJson(stdout) {
  const lines = stdout.split("\n");
  const first = lines.findIndex((line) => line.startsWith("{"));
  const last = lines.findLastIndex((line) => line.startsWith("}"));
  if (first < 0 || last < first) return undefined;
  try {
    return JSON.parse(lines.slice(first, last + 1).join("\n"));
  } catch {
    return undefined;
  }
}

function readJob(report, workload, failure) {
  const job = report?.jobs?.[0];
  if (job === undefined) throw failure("reported no job");
  if (job.error !== 0) throw failure(`job failed with error ${job.error}`);
  const side = workload.rw.endsWith("read") ? job.read : job.write;
  const percentiles = side?.clat_ns?.percentile ?? {};
  const us = (key) => Number(percentiles[key]) / 1000;
  const result = {
    iops: side.iops,
    mibps: side.bw_bytes / 2 ** 20,
    p50Us: us("50.000000"),
    p99Us: us("99.000000"),
    p999Us: us("99.900000"),
    meanUs: side.clat_ns.mean / 1000,
    latP50Us: Number(side.lat_ns?.percentile?.["50.000000"]) / 1000,
    ios: side.total_ios,
  };
  if (!(result.ios > 0) || !Number.isFinite(result.p99Us))
    throw failure(`completed no ${workload.rw} requests`);
  return result;
}
