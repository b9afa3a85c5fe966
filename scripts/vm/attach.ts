// The attach experiment: `peercopy attach` and `peercopy detach` on their
// kernel path, run by the peercopy CLI inside a Linux guest (this machine's
// node and the checkout's dist/ in its initramfs) against `peercopy serve` on
// the host, reached through qemu's user networking. The guest makes ext4 on
// the device attach printed, writes files, tries a detach while mounted, then
// detaches; the host reads the exported image back with e2fsck and debugfs.
//
//   scripts/vm-experiment --attach [--per N] [--cache DIR] [--timeout SECONDS] [--json]
import { createHash } from "node:crypto";
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { ensureGuest } from "./guest.js";
import { count, logLine, qemuArgs, runCommand } from "./experiment.js";
import { Controller, Qemu, type GuestLine } from "./processes.js";

const ROOT = resolve(import.meta.dirname, "../..");
const SIZE_MIB = 64;
// The initramfs (node's 94 MiB in it) sits in the guest's RAM twice while it unpacks.
const MEMORY_MIB = 512;

/** One peercopy command the guest ran. */
export interface GuestStep {
  readonly exit: number;
  /** Seconds on the guest's clock. */
  readonly seconds: number;
  /** Its lines, each run of whitespace one space (the console lines arrive as words). */
  readonly stdout: string[];
  readonly stderr: string[];
}

/** An nbd device as the guest's sysfs showed it at one point. */
export interface DeviceState {
  readonly device: string;
  readonly connected: boolean;
  readonly sectors: number;
}

export interface AttachResult {
  ok: boolean;
  seconds: number;
  kernel: string;
  guestBuildSeconds: number | null;
  /** The initramfs qemu loads, and the node + peercopy layer in it. */
  initrdBytes: number;
  peercopyBytes: number;
  /** Seconds from qemu's start to the guest's first line, its modules loaded. */
  bootSeconds: number;
  /** Seconds from qemu's start to the guest's last line. */
  guestSeconds: number;
  node: string;
  /** Seconds the guest's first `node -e 0` took. */
  nodeStartSeconds: number;
  /**
   * attach, list (detach --list), again (attach to the connected device),
   * missing (attach to an export the server lacks), busy (detach while
   * mounted), detach, after (detach --list).
   */
  steps: Record<string, GuestStep>;
  /** attached, again, missing (the device that attach would have taken), busy, detached. */
  states: Record<string, DeviceState>;
  /** The export's size in 512-byte sectors, as the host served it. */
  exportSectors: number;
  /** The files the guest wrote with their SHA-256, and what the host read back from the image. */
  files: { name: string; guest: string; host: string | null }[];
  fsckExit: number;
  fsckLog: string;
  failure?: string;
}

function seconds(ms: number): number {
  return Math.round(ms / 100) / 10;
}

function run(
  file: string,
  args: readonly string[],
): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  return new Promise((done) => {
    execFile(
      file,
      args,
      { encoding: "buffer", maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof err.code === "number" ? err.code : -1;
        done({ code, stdout, stderr: stderr.toString("utf8") });
      },
    );
  });
}

function guestSteps(lines: readonly GuestLine[]): Record<string, GuestStep> {
  const out: Record<string, GuestStep> = {};
  const text = (kind: string, step: string): string[] =>
    lines
      .filter((l) => l.word === kind && l.args[0] === step)
      .map((l) => l.args.slice(1).join(" "));
  for (const l of lines) {
    if (l.word !== "RAN") continue;
    const [step = "", exit, from, to] = l.args;
    out[step] = {
      exit: Number(exit),
      seconds: Math.round((Number(to) - Number(from)) * 10) / 10,
      stdout: text("OUT", step),
      stderr: text("ERR", step),
    };
  }
  return out;
}

function deviceStates(lines: readonly GuestLine[]): Record<string, DeviceState> {
  const out: Record<string, DeviceState> = {};
  for (const l of lines) {
    const [label, name, state, sectors] = l.args;
    if (l.word !== "STATE" || label === undefined) continue;
    out[label] = {
      device: `/dev/${name ?? ""}`,
      connected: state === "connected",
      sectors: Number(sectors),
    };
  }
  return out;
}

/** Every check the experiment makes; an empty list is a pass. */
export function attachProblems(r: AttachResult, per: number): string[] {
  const problems: string[] = [];
  const check = (ok: boolean, what: string): void => {
    if (!ok) problems.push(what);
  };
  const s = r.steps;
  const st = r.states;
  if (r.failure !== undefined) problems.push(r.failure);
  check(s.attach?.exit === 0, "attach did not exit 0");
  check(s.attach?.stdout.join("\n") === "/dev/nbd0", "attach did not print /dev/nbd0 alone");
  check(
    st.attached?.connected === true && st.attached.sectors === r.exportSectors,
    "/dev/nbd0 was not connected with the export's size",
  );
  check(
    s.list?.stdout.join("\n") === "/dev/nbd0 kernel nbd://10.0.2.100:10809/",
    "detach --list did not show the kernel attachment",
  );
  check(
    s.again?.exit === 1 && s.again.stderr.join("\n").includes("/dev/nbd0 is already connected"),
    "attach to the connected /dev/nbd0 was not refused as already connected",
  );
  check(st.again?.connected === true, "the refused attach disturbed /dev/nbd0");
  check(
    s.missing?.exit === 1 && s.missing.stderr.join("\n").includes('no export named "missing"'),
    "attach to a missing export did not say the server has no such export",
  );
  check(
    !(s.missing?.stderr.join("\n") ?? "").includes("oldstyle"),
    "attach repeated nbd-client's oldstyle warning",
  );
  check(st.missing?.connected === false, "the failed attach left its device connected");
  check(
    s.busy?.exit === 1 && s.busy.stderr.join("\n").includes("is in use (mounted on /mnt)"),
    "detach while mounted was not refused naming the mount",
  );
  check(st.busy?.connected === true, "the refused detach disconnected the device");
  check(s.detach?.exit === 0, "detach did not exit 0");
  check(st.detached?.connected === false, "/dev/nbd0 was still connected after detach");
  check(s.after?.exit === 0 && s.after.stdout.length === 0, "detach left a record behind");
  check(r.files.length === per + 1, `the guest reported ${r.files.length} files, not ${per + 1}`);
  for (const f of r.files)
    check(f.host === f.guest, `${f.name} reads back ${f.host ?? "nothing"} on the host`);
  check(r.fsckExit === 0, `e2fsck -fn on the host exited ${r.fsckExit}`);
  return problems;
}

export interface AttachOptions {
  /** Files the guest writes besides one of 2 MiB. */
  readonly per: number;
  readonly cacheDir?: string;
  readonly timeoutMs?: number;
  readonly log?: (line: string) => void;
}

export async function runAttachExperiment(options: AttachOptions): Promise<AttachResult> {
  const log = options.log ?? (() => undefined);
  const t0 = performance.now();
  const deadline = t0 + (options.timeoutMs ?? 300_000);
  const left = (): number => Math.max(1000, deadline - performance.now());
  const guest = await ensureGuest(options.cacheDir ?? join(ROOT, ".cache", "vm"), log, {
    peercopy: ROOT,
  });
  const guestBuildSeconds = guest.built ? seconds(performance.now() - t0) : null;
  log(
    `guest: Linux ${guest.kernelVersion}${guestBuildSeconds === null ? " (cached)" : ` (built in ${guestBuildSeconds} s)`}, initramfs ${mib(guest.initrdBytes)} MiB`,
  );
  const dir = await mkdtemp(join(tmpdir(), "peercopy-vm-attach-"));
  const image = join(dir, "export.img");
  const procs: { stop(signal?: NodeJS.Signals): Promise<void> }[] = [];
  try {
    // The default export (""): the README's "peercopy attach nbd://host:port/".
    const serve = ["serve", image, "--size", `${SIZE_MIB}M`, "--listen", "127.0.0.1:0"];
    const server = new Controller("peercopy serve", serve);
    procs.push(server);
    await server.listening();
    log(`serving ${server.uri}; booting a guest with node and peercopy`);
    const vm = new Qemu(
      "attach guest",
      qemuArgs(
        guest,
        `pc.mode=attach pc.per=${options.per} pc.export=`,
        { variant: "nbd", port: server.port },
        MEMORY_MIB,
      ),
    );
    procs.push(vm);
    let failure: string | undefined;
    const fail = (err: unknown): undefined => {
      failure ??= err instanceof Error ? err.message : String(err);
      return undefined;
    };
    const booted = await vm.waitFor("BOOTED", left()).catch(fail);
    if (booted !== undefined) await vm.waitFor("END", left()).catch(fail);
    await vm.stop("SIGKILL");
    const lines = vm.all();
    const node = lines.find((l) => l.word === "NODE")?.args ?? [];
    // SIGTERM: serve finishes, flushes the image and exits 0.
    await server.stopClean();

    const fsck = await run("e2fsck", ["-fn", image]);
    const files: AttachResult["files"] = [];
    for (const l of lines.filter((x) => x.word === "FILE")) {
      const [name = "", sum = ""] = l.args;
      const read = await run("debugfs", ["-R", `cat /${name}`, image]);
      const host =
        read.code === 0 && read.stdout.length > 0
          ? createHash("sha256").update(read.stdout).digest("hex")
          : null;
      files.push({ name, guest: sum, host });
    }
    const result: AttachResult = {
      ok: false,
      seconds: seconds(performance.now() - t0),
      kernel: guest.kernelVersion,
      guestBuildSeconds,
      initrdBytes: guest.initrdBytes,
      peercopyBytes: guest.peercopyBytes,
      bootSeconds: booted === undefined ? -1 : seconds(booted.at - vm.started),
      guestSeconds: seconds((lines.at(-1)?.at ?? vm.started) - vm.started),
      node: node[0] ?? "",
      nodeStartSeconds: Math.round((Number(node[2]) - Number(node[1])) * 10) / 10,
      steps: guestSteps(lines),
      states: deviceStates(lines),
      exportSectors: SIZE_MIB * 2048,
      files,
      fsckExit: fsck.code,
      fsckLog: `${fsck.stdout.toString("utf8")}${fsck.stderr}`.trim(),
      ...(failure === undefined ? {} : { failure }),
    };
    result.ok = attachProblems(result, options.per).length === 0;
    return result;
  } finally {
    for (const p of procs.reverse()) await p.stop("SIGKILL");
    await rm(dir, { recursive: true, force: true });
  }
}

function mib(n: number): string {
  return (n / 2 ** 20).toFixed(1);
}

export function describeAttach(r: AttachResult, per: number): string {
  const step = (name: string): string => {
    const s = r.steps[name];
    if (s === undefined) return "not run";
    const said = [...s.stdout, ...s.stderr].join(" | ");
    return `exit ${s.exit} in ${s.seconds} s${said === "" ? "" : `: ${said}`}`;
  };
  const state = (label: string): string => {
    const d = r.states[label];
    return d === undefined ? "unknown" : `${d.device} ${d.connected ? "connected" : "free"}`;
  };
  const intact = r.files.filter((f) => f.host === f.guest).length;
  const problems = attachProblems(r, per);
  return [
    `peercopy attach/detach in a Linux guest (${r.kernel}, node ${r.node}): ${r.ok ? "OK" : "FAILED"}`,
    `  initramfs ${mib(r.initrdBytes)} MiB, node and peercopy ${mib(r.peercopyBytes)} MiB of it${r.guestBuildSeconds === null ? "" : `; guest built in ${r.guestBuildSeconds} s`}`,
    `  guest boot ${r.bootSeconds} s; first node -e 0 ${r.nodeStartSeconds} s; the guest done ${r.guestSeconds} s after qemu start`,
    `  attach ${step("attach")}; ${state("attached")}, ${r.states.attached?.sectors ?? "?"} sectors`,
    `  detach --list ${step("list")}`,
    `  attach --device /dev/nbd0 again ${step("again")}; ${state("again")}`,
    `  attach to a missing export ${step("missing")}; ${state("missing")}`,
    `  ext4 mounted, detach ${step("busy")}; ${state("busy")}`,
    `  unmounted, detach ${step("detach")}; ${state("detached")}; detach --list ${step("after")}`,
    `  on the host: e2fsck -fn exit ${r.fsckExit}; debugfs reads back ${intact} of ${r.files.length} files intact`,
    ...problems.map((p) => `  PROBLEM: ${p}`),
    `all done in ${r.seconds} s: ${r.ok ? "OK" : "FAILED"}`,
    "",
  ].join("\n");
}

const USAGE =
  "usage: scripts/vm-experiment --attach [--per N] [--cache DIR] [--timeout SECONDS] [--json]\n";

/** `scripts/vm-experiment --attach …` (run.ts sends it here). */
export function main(argv: string[]): Promise<number> {
  return runCommand(
    USAGE,
    () => {
      const { values } = parseArgs({
        args: argv,
        options: {
          attach: { type: "boolean" },
          per: { type: "string", default: "8" },
          cache: { type: "string" },
          timeout: { type: "string", default: "300" },
          json: { type: "boolean" },
          help: { type: "boolean", short: "h" },
        },
      });
      if (values.help === true) return undefined;
      const options: AttachOptions = {
        per: count(values.per, "per", 1000),
        timeoutMs: count(values.timeout, "timeout", 86_400) * 1000,
        log: logLine,
        ...(values.cache === undefined ? {} : { cacheDir: values.cache }),
      };
      return { options, json: values.json === true };
    },
    runAttachExperiment,
    (result, options) => describeAttach(result, options.per),
  );
}
