// An NBD export as a local block device. Where the kernel has the nbd module,
// nbd-client connects /dev/nbdN to the export. Elsewhere nbdfuse presents the
// export as a file and a loop device turns that file into a disk.
//
// Each attachment leaves a small JSON record in the runtime directory, named
// after the device, so `detach` works from any process: it refuses while the
// device is mounted or held, then undoes the steps in reverse order.
import { spawn } from "node:child_process";
import { existsSync, openSync, closeSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, realpath, rm, stat, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { parseNbdUri } from "../../nbd/uri.js";
import { findProgram, runProgram, sleep } from "./programs.js";

export const AttachMethod = { AUTO: "auto", KERNEL: "kernel", FUSE: "fuse" } as const;
export type AttachMethod = (typeof AttachMethod)[keyof typeof AttachMethod];

/** What `detach` needs to undo an attachment, kept in RUNTIME/DEVICE.json. */
export interface Attachment {
  readonly method: "kernel" | "fuse";
  readonly device: string;
  readonly uri: string;
  /** fuse: the directory holding the nbdfuse file, its pid file and its log. */
  readonly workDir?: string;
  readonly fuseFile?: string;
  readonly nbdfusePid?: number;
  readonly attachedAt: string;
}

export class AttachError extends Error {
  readonly code = "EATTACH";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "AttachError";
  }
}

export interface AttachOptions {
  readonly uri: string;
  readonly runtimeDir: string;
  readonly method?: AttachMethod;
  /** /dev/nbdN (kernel) or /dev/loopN (fuse); default: the first free one. */
  readonly device?: string;
  /** How long to wait for the export to appear (default 20 s). */
  readonly timeoutMs?: number;
}

/** True when the kernel has an NBD driver (loaded, or loadable now). */
export async function kernelNbdAvailable(): Promise<boolean> {
  if (existsSync("/sys/module/nbd")) return true;
  const modprobe = findProgram("modprobe");
  if (modprobe === undefined) return false;
  await runProgram(modprobe, ["-q", "nbd"]);
  return existsSync("/sys/module/nbd");
}

function recordPath(runtimeDir: string, device: string): string {
  return join(runtimeDir, `${basename(device)}.json`);
}

export async function attach(options: AttachOptions): Promise<Attachment> {
  const uri = parseNbdUri(options.uri);
  const method = options.method ?? AttachMethod.AUTO;
  await mkdir(options.runtimeDir, { recursive: true, mode: 0o700 });
  const kernel =
    method === AttachMethod.KERNEL ||
    (method === AttachMethod.AUTO &&
      findProgram("nbd-client") !== undefined &&
      (await kernelNbdAvailable()));
  if (options.device !== undefined) {
    const wanted = kernel ? /^\/dev\/nbd\d+$/ : /^\/dev\/loop\d+$/;
    if (!wanted.test(options.device))
      throw new AttachError(
        `--device ${options.device}: the ${kernel ? "kernel NBD client attaches /dev/nbdN" : "nbdfuse path attaches a loop device, /dev/loopN"}`,
      );
  }
  const attachment = kernel ? await attachKernel(options, uri) : await attachFuse(options);
  await writeFile(
    recordPath(options.runtimeDir, attachment.device),
    `${JSON.stringify(attachment, null, 2)}\n`,
  );
  return attachment;
}

/**
 * True while /dev/nbdN is connected: the kernel shows a pid file (the process
 * that connected it; with the netlink interface nbd-client has exited since).
 */
function nbdConnected(device: string): boolean {
  return existsSync(join("/sys/block", basename(device), "pid"));
}

async function freeNbdDevice(): Promise<string> {
  const names = (await readdir("/sys/block")).filter((n) => /^nbd\d+$/.test(n));
  names.sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  for (const name of names) if (!nbdConnected(name)) return `/dev/${name}`;
  throw new AttachError("every /dev/nbdN is in use; detach one or load nbd with more nbds_max");
}

/**
 * What nbd-client said, without its progress dots and without the warning it
 * prints for every empty export name ("the oldstyle protocol is no longer
 * supported"): it negotiates newstyle all the same.
 */
export function nbdClientMessage(output: string): string {
  const lines = output
    .split("\n")
    .filter((l) => !/^(Warning: the oldstyle protocol|This method now uses the newstyle)/.test(l))
    .map((l) =>
      l
        .replace(/^Negotiation: \.*(size = \S+)?/, "")
        .replace(/^Error: /, "")
        .trim(),
    )
    .filter((l) => l !== "" && l !== "Exiting.");
  return lines.join("; ") || "no message";
}

async function attachKernel(
  options: AttachOptions,
  uri: ReturnType<typeof parseNbdUri>,
): Promise<Attachment> {
  const client = findProgram("nbd-client");
  if (client === undefined)
    throw new AttachError("nbd-client is not installed (Debian: apt-get install nbd-client)");
  if (!(await kernelNbdAvailable()))
    throw new AttachError("the kernel has no nbd module; use --method fuse");
  const dev = options.device ?? (await freeNbdDevice());
  // The kernel would refuse (nbd-client says only "Failed to setup device, check dmesg").
  if (nbdConnected(dev)) {
    const record = (await listAttachments(options.runtimeDir)).find((a) => a.device === dev);
    throw new AttachError(
      record === undefined
        ? `${dev} is already connected, not by peercopy attach; give another --device`
        : `${dev} is already connected (peercopy attach ${record.uri}); peercopy detach ${dev} first, or give another --device`,
    );
  }
  const where =
    uri.endpoint.kind === "unix"
      ? ["-unix", uri.endpoint.path]
      : [uri.endpoint.host, String(uri.endpoint.port)];
  const result = await runProgram(client, [...where, dev, "-N", uri.exportName]);
  if (result.code !== 0)
    throw new AttachError(`nbd-client could not attach ${dev}: ${nbdClientMessage(result.output)}`);
  return { method: "kernel", device: dev, uri: options.uri, attachedAt: new Date().toISOString() };
}

async function attachFuse(options: AttachOptions): Promise<Attachment> {
  const nbdfuse = findProgram("nbdfuse");
  const losetup = findProgram("losetup");
  if (nbdfuse === undefined || losetup === undefined)
    throw new AttachError(
      `the nbdfuse path needs nbdfuse and losetup (Debian: apt-get install libnbd-bin mount fuse3)`,
    );
  const workDir = await mkdtemp(join(options.runtimeDir, "fuse-"));
  const fuseFile = join(workDir, "disk");
  const pidFile = join(workDir, "nbdfuse.pid");
  await writeFile(fuseFile, "");
  // Detached and with its output in a file: nbdfuse outlives this process.
  const log = openSync(join(workDir, "nbdfuse.log"), "a");
  const child = spawn(nbdfuse, ["-P", pidFile, fuseFile, options.uri], {
    detached: true,
    stdio: ["ignore", log, log],
  });
  closeSync(log);
  let exited: number | null | undefined;
  child.on("exit", (code) => {
    exited = code;
  });
  child.on("error", () => {
    exited = -1;
  });
  child.unref();
  const undo = async (): Promise<void> => {
    await runProgram(findProgram("fusermount3") ?? "fusermount3", ["-u", fuseFile]);
    if (exited === undefined) child.kill("SIGKILL");
    await rm(workDir, { recursive: true, force: true });
  };
  // nbdfuse writes its pid file once the file serves the export.
  const deadline = Date.now() + (options.timeoutMs ?? 20_000);
  while (!existsSync(pidFile) || (await stat(fuseFile)).size === 0) {
    if (exited !== undefined || Date.now() > deadline) {
      const why = await readFile(join(workDir, "nbdfuse.log"), "utf8").catch(() => "");
      await undo();
      throw new AttachError(
        `nbdfuse could not present ${options.uri}${exited === undefined ? " in time" : ""}: ${why.trim() || "no message"}`,
      );
    }
    await sleep(50);
  }
  const args = options.device === undefined ? ["-f"] : [options.device];
  const result = await runProgram(losetup, [...args, "--show", fuseFile]);
  const device = result.output.trim().split("\n").pop() ?? "";
  if (result.code !== 0 || !/^\/dev\/loop\d+$/.test(device)) {
    await undo();
    throw new AttachError(`losetup could not attach ${fuseFile}: ${result.output.trim()}`);
  }
  return {
    method: "fuse",
    device,
    uri: options.uri,
    workDir,
    fuseFile,
    nbdfusePid: child.pid ?? Number(await readFile(pidFile, "utf8")),
    attachedAt: new Date().toISOString(),
  };
}

/** The attachments recorded in the runtime directory. */
export async function listAttachments(runtimeDir: string): Promise<Attachment[]> {
  if (!existsSync(runtimeDir)) return [];
  const out: Attachment[] = [];
  for (const name of await readdir(runtimeDir)) {
    if (!name.endsWith(".json")) continue;
    try {
      out.push(JSON.parse(await readFile(join(runtimeDir, name), "utf8")) as Attachment);
    } catch {
      // a record being written right now, or not one of ours
    }
  }
  return out;
}

/** Where the device is in use: mount points, and kernel holders (dm, md). */
export async function deviceUsers(device: string): Promise<string[]> {
  const real = await realpath(device).catch(() => device);
  const users: string[] = [];
  const mounts = await readFile("/proc/self/mounts", "utf8");
  for (const line of mounts.split("\n")) {
    const [source, target] = line.split(" ");
    if (source === undefined || target === undefined) continue;
    const src = source.startsWith("/dev/") ? await realpath(source).catch(() => source) : source;
    if (src === real) users.push(`mounted on ${target.replace(/\\040/g, " ")}`);
  }
  const holders = join("/sys/block", basename(real), "holders");
  if (existsSync(holders)) for (const h of await readdir(holders)) users.push(`held by ${h}`);
  return users;
}

/** True while the process runs (a zombie waiting for its parent has ended). */
async function alive(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  return state !== "" && state !== "Z" && state !== "X";
}

async function isNbdfuse(pid: number): Promise<boolean> {
  const comm = await readFile(`/proc/${pid}/comm`, "utf8").catch(() => "");
  return comm.trim() === "nbdfuse";
}

async function fuseMounted(path: string): Promise<boolean> {
  const mounts = await readFile("/proc/self/mounts", "utf8");
  return mounts.split("\n").some((line) => line.split(" ")[1] === path);
}

/** Undo an attachment recorded in runtimeDir. Refuses while the device is mounted or held. */
export async function detach(runtimeDir: string, device: string): Promise<Attachment> {
  const path = recordPath(runtimeDir, device);
  let record: Attachment;
  try {
    record = JSON.parse(await readFile(path, "utf8")) as Attachment;
  } catch {
    const known = (await listAttachments(runtimeDir)).map((a) => a.device);
    throw new AttachError(
      `${device} was not attached by peercopy attach (records in ${runtimeDir}: ${known.join(", ") || "none"})`,
    );
  }
  const users = await deviceUsers(record.device);
  if (users.length > 0)
    throw new AttachError(`${record.device} is in use (${users.join("; ")}); umount it first`);
  if (record.method === "kernel") {
    const result = await runProgram(findProgram("nbd-client") ?? "nbd-client", [
      "-d",
      record.device,
    ]);
    if (result.code !== 0)
      throw new AttachError(`nbd-client -d ${record.device}: ${result.output.trim()}`);
  } else {
    await detachFuse(record);
  }
  await rm(path, { force: true });
  return record;
}

async function detachFuse(record: Attachment): Promise<void> {
  const { fuseFile, workDir, nbdfusePid } = record;
  if (fuseFile === undefined || workDir === undefined)
    throw new AttachError(`the record of ${record.device} is damaged (no fuse file)`);
  const losetup = findProgram("losetup") ?? "losetup";
  const backing = await readFile(
    join("/sys/block", basename(record.device), "loop", "backing_file"),
    "utf8",
  ).catch(() => "");
  if (backing.trim() === fuseFile) {
    const result = await runProgram(losetup, ["-d", record.device]);
    if (result.code !== 0)
      throw new AttachError(`losetup -d ${record.device}: ${result.output.trim()}`);
  }
  // The loop device lets go of the file asynchronously: retry the unmount briefly.
  const fusermount = findProgram("fusermount3") ?? "fusermount3";
  for (let attempt = 0; await fuseMounted(fuseFile); attempt++) {
    const result = await runProgram(fusermount, ["-u", fuseFile]);
    if (result.code === 0) break;
    if (attempt >= 40) throw new AttachError(`fusermount3 -u ${fuseFile}: ${result.output.trim()}`);
    await sleep(250);
  }
  if (nbdfusePid !== undefined && (await isNbdfuse(nbdfusePid))) {
    // Unmounted, nbdfuse exits by itself; make sure it did.
    for (let i = 0; i < 100 && (await alive(nbdfusePid)); i++) {
      if (i === 40) process.kill(nbdfusePid, "SIGTERM");
      if (i === 80) process.kill(nbdfusePid, "SIGKILL");
      await sleep(50);
    }
    if ((await alive(nbdfusePid)) && (await isNbdfuse(nbdfusePid)))
      throw new AttachError(`nbdfuse (pid ${nbdfusePid}) does not exit`);
  }
  await rm(workDir, { recursive: true, force: true });
}
