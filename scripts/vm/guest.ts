// The experiment's guest: a Debian kernel (vmlinuz and the few modules the
// guest needs, extracted from the archive's linux-image package, not installed)
// and a busybox initramfs carrying mke2fs, e2fsck, nbd-client and their shared
// libraries from this machine. Built once into a cache directory; a change to
// the guest's init script or the module list builds a new one.
//
// With `peercopy` set, a second archive is appended to that initramfs (the
// kernel unpacks concatenated cpio archives in turn): this machine's node and
// its libraries, and the checkout's package.json, dist/ and the production
// node_modules, so the guest runs the peercopy CLI itself. That layer is kept
// beside the base, named by a hash of its contents.
//
// The kernel boots uncompressed: qemu loads the ELF vmlinux from inside the
// bzImage straight into guest memory through its PVH entry point, so the guest
// does not spend most of its boot decompressing itself under TCG.
import { createHash } from "node:crypto";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import {
  copyFile,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import { basename, dirname, join, relative } from "node:path";
import { promisify } from "node:util";

/** What building and booting the guest takes on the host (a test's requireTools list). */
export const GUEST_TOOLS = [
  "qemu-system-x86_64",
  "busybox",
  "nbd-client",
  "mke2fs",
  "e2fsck",
  "apt-get",
  "apt-cache",
  "dpkg-deb",
  "depmod",
  "xz",
  "ldd",
] as const;

const exec = promisify(execFile);

// Loaded in this order by the guest's init; each one's dependencies are found
// with depmod and loaded before it.
const MODULES = [
  "kernel/crypto/crc32c_generic.ko",
  "kernel/fs/ext4/ext4.ko",
  "kernel/drivers/virtio/virtio_pci.ko",
  "kernel/drivers/block/virtio_blk.ko",
  "kernel/drivers/net/virtio_net.ko",
  "kernel/drivers/block/nbd.ko",
];

// What the guest runs from the initramfs, besides busybox.
const PROGRAMS = ["/sbin/mke2fs", "/sbin/e2fsck", "/usr/sbin/nbd-client"];
const FILES = ["/etc/mke2fs.conf"];

export interface Guest {
  /** The ELF vmlinux when the kernel has a PVH entry point, else the bzImage. */
  readonly kernel: string;
  readonly initrd: string;
  readonly kernelVersion: string;
  /** True when this call built it; false when it came from the cache. */
  readonly built: boolean;
  /** Bytes of the initramfs qemu loads, and of the peercopy layer in it (0 without). */
  readonly initrdBytes: number;
  readonly peercopyBytes: number;
}

export interface GuestOptions {
  /**
   * A peercopy checkout, built (dist/): the initramfs also carries node, at
   * /usr/bin/node, and peercopy under /peercopy with /usr/bin/peercopy to run it.
   */
  readonly peercopy?: string;
}

async function sh(file: string, args: readonly string[], cwd?: string): Promise<string> {
  const { stdout } = await exec(file, args, {
    maxBuffer: 64 * 1024 * 1024,
    ...(cwd === undefined ? {} : { cwd }),
    env: { ...process.env, PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin` },
  });
  return stdout;
}

/** The versioned kernel package linux-image-amd64 points at, e.g. linux-image-6.1.0-57-amd64. */
async function kernelPackage(): Promise<string> {
  const out = await sh("apt-cache", ["depends", "linux-image-amd64"]);
  const m = /Depends:\s*(linux-image-\d\S*)/.exec(out);
  if (m?.[1] === undefined)
    throw new Error(
      `apt-cache depends linux-image-amd64 names no kernel package (run apt-get update): ${out}`,
    );
  return m[1];
}

/** Programs' shared libraries and the dynamic loader, as ldd reports them. */
async function sharedLibraries(programs: readonly string[]): Promise<string[]> {
  const libs = new Set<string>();
  for (const program of programs) {
    const out = await sh("ldd", [program]).catch(() => "");
    for (const m of out.matchAll(/(\/\S+\.so[.\d]*)\s+\(0x/g))
      if (m[1] !== undefined) libs.add(m[1]);
  }
  return [...libs];
}

/** A cpio "newc" archive (the initramfs format) of directories, files and symlinks. */
class Cpio {
  private readonly parts: Buffer[] = [];
  private ino = 1;

  private entry(name: string, mode: number, data: Buffer): void {
    const field = (n: number): string => n.toString(16).padStart(8, "0");
    const nameBytes = Buffer.from(`${name}\0`);
    const header =
      "070701" +
      [this.ino++, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, nameBytes.length, 0]
        .map(field)
        .join("");
    const pad = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4);
    this.parts.push(Buffer.from(header), nameBytes, pad(110 + nameBytes.length), data);
    this.parts.push(pad(data.length));
  }

  dir(name: string): void {
    this.entry(name, 0o040755, Buffer.alloc(0));
  }
  file(name: string, data: Buffer, mode = 0o644): void {
    this.entry(name, 0o100000 | mode, data);
  }
  symlink(name: string, target: string): void {
    this.entry(name, 0o120777, Buffer.from(target));
  }
  finish(): Buffer {
    this.entry("TRAILER!!!", 0, Buffer.alloc(0));
    return Buffer.concat(this.parts);
  }
}

/** Every parent directory of the paths, shortest first. */
function parents(paths: readonly string[]): string[] {
  const dirs = new Set<string>();
  for (const p of paths) {
    for (let d = dirname(p); d !== "/" && d !== "."; d = dirname(d)) dirs.add(d);
  }
  return [...dirs].sort((a, b) => a.split("/").length - b.split("/").length);
}

/** Load order for MODULES: every dependency (from modules.dep) before what needs it. */
function loadOrder(modulesDep: string): string[] {
  const deps = new Map<string, string[]>();
  for (const line of modulesDep.split("\n")) {
    const [mod, rest] = line.split(":");
    if (mod === undefined || rest === undefined) continue;
    deps.set(mod, rest.trim() === "" ? [] : rest.trim().split(/\s+/));
  }
  const order: string[] = [];
  const visit = (mod: string): void => {
    if (order.includes(mod)) return;
    const ds = deps.get(mod);
    if (ds === undefined) throw new Error(`module ${mod} is not in the kernel package`);
    for (const d of ds) visit(d);
    order.push(mod);
  };
  for (const m of MODULES) visit(m);
  return order;
}

async function buildInitrd(
  init: string,
  moduleDir: string,
  order: readonly string[],
  out: string,
): Promise<void> {
  const busybox = "/bin/busybox";
  const programs = [busybox, ...PROGRAMS];
  for (const p of [...programs, ...FILES])
    if (!existsSync(p)) throw new Error(`${p} is missing on this machine; see .ci/run`);
  const libs = await sharedLibraries(programs);
  const cpio = new Cpio();
  const paths = [
    ...programs,
    ...libs,
    ...FILES,
    "/lib/modules/x",
    "/proc/x",
    "/sys/x",
    "/dev/x",
    "/mnt/x",
    "/tmp/x",
    "/sbin/x",
  ];
  for (const d of parents(paths)) cpio.dir(d.slice(1));
  for (const p of programs) cpio.file(p.slice(1), await readFile(p), 0o755);
  for (const l of libs) cpio.file(l.slice(1), await readFile(l), 0o755);
  for (const f of FILES) cpio.file(f.slice(1), await readFile(f));
  cpio.symlink("sbin/mkfs.ext4", "mke2fs");
  for (const m of order)
    cpio.file(`lib/modules/${basename(m)}`, await readFile(join(moduleDir, m)));
  cpio.file("modules", Buffer.from(order.map((m) => basename(m)).join("\n") + "\n"));
  cpio.file("init", Buffer.from(init), 0o755);
  await writeFile(out, cpio.finish());
}

const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

/** True when the ELF image carries the Xen PVH entry note qemu's -kernel boots an ELF by. */
export function hasPvhEntry(elf: Buffer): boolean {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) return false;
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + 56 > elf.length || elf.readUInt32LE(ph) !== 4) continue; // PT_NOTE
    const start = Number(elf.readBigUInt64LE(ph + 8));
    const end = Math.min(elf.length, start + Number(elf.readBigUInt64LE(ph + 32)));
    for (let n = start; n + 12 <= end;) {
      const namesz = elf.readUInt32LE(n);
      const descsz = elf.readUInt32LE(n + 4);
      const type = elf.readUInt32LE(n + 8);
      const name = elf.subarray(n + 12, n + 12 + namesz).toString("latin1");
      if (name === "Xen\0" && type === XEN_ELFNOTE_PHYS32_ENTRY) return true;
      n += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return false;
}

/** Writes the xz-compressed vmlinux inside a bzImage to `out`; false when it is not one qemu boots as ELF. */
async function extractVmlinux(bzImage: string, out: string): Promise<boolean> {
  const image = await readFile(bzImage);
  const at = image.indexOf(XZ_MAGIC);
  if (at < 0) return false;
  const payload = join(dirname(out), "payload.xz");
  await writeFile(payload, image.subarray(at));
  // The compressed kernel is followed by the rest of the bzImage: one stream only.
  const { stdout: elf } = await exec("xz", ["-dc", "--single-stream", payload], {
    encoding: "buffer",
    maxBuffer: 512 * 1024 * 1024,
  }).finally(() => rm(payload, { force: true }));
  if (!hasPvhEntry(elf)) return false;
  await writeFile(out, elf);
  return true;
}

/** The directories of the packages package.json's dependencies pull in, resolved as node does. */
async function productionPackages(root: string): Promise<string[]> {
  const found = new Set<string>();
  const visit = async (from: string): Promise<void> => {
    const pkg = JSON.parse(await readFile(join(from, "package.json"), "utf8")) as {
      dependencies?: Record<string, string>;
      optionalDependencies?: Record<string, string>;
    };
    for (const name of Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies })) {
      const dir = resolvePackage(root, from, name);
      if (dir === undefined) {
        if (pkg.optionalDependencies?.[name] !== undefined) continue;
        throw new Error(`${name}, needed by ${from}, is not installed (npm ci)`);
      }
      if (found.has(dir)) continue;
      found.add(dir);
      await visit(dir);
    }
  };
  await visit(root);
  return [...found].sort();
}

/** node_modules/NAME in `from` or the nearest directory above it, up to root. */
function resolvePackage(root: string, from: string, name: string): string | undefined {
  for (let d = from; ; d = dirname(d)) {
    const candidate = join(d, "node_modules", name);
    if (existsSync(join(candidate, "package.json"))) return candidate;
    if (d === root || dirname(d) === d) return undefined;
  }
}

/** Regular files under dir, sorted, not descending into nested node_modules. */
async function filesUnder(dir: string, keep: (name: string) => boolean): Promise<string[]> {
  const out: string[] = [];
  const entries = await readdir(dir, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const e of entries) {
    const path = join(dir, e.name);
    if (e.isDirectory() && e.name !== "node_modules") out.push(...(await filesUnder(path, keep)));
    else if (e.isFile() && keep(e.name)) out.push(path);
  }
  return out;
}

/**
 * The second archive: node with its libraries, and peercopy from the checkout
 * at root (package.json, for "type": "module"; dist/ without source maps and
 * declarations; every package `dependencies` pulls in: pino, pino-pretty,
 * prom-client, cli-progress and theirs).
 */
async function peercopyLayer(root: string): Promise<Buffer> {
  if (!existsSync(join(root, "dist/src/cli/main.js")))
    throw new Error(`${root}/dist is not built (npm run build)`);
  const node = process.execPath;
  const files = new Map<string, string>(); // guest path → host path
  for (const p of [node, ...(await sharedLibraries([node]))]) files.set(p, p);
  const add = (host: string): void => {
    const rel = relative(root, host);
    if (rel.startsWith("..")) throw new Error(`${host} lies outside ${root}`);
    files.set(join("/peercopy", rel), host);
  };
  add(join(root, "package.json"));
  for (const f of await filesUnder(join(root, "dist"), (n) => !/\.(map|d\.ts)$/.test(n))) add(f);
  for (const pkg of await productionPackages(root))
    for (const f of await filesUnder(pkg, () => true)) add(f);

  const cpio = new Cpio();
  const wrapper = "usr/bin/peercopy";
  for (const d of parents([...files.keys(), `/${wrapper}`])) cpio.dir(d.slice(1));
  for (const [guest, host] of files)
    cpio.file(guest.slice(1), await readFile(host), (await stat(host)).mode & 0o777);
  const main = "/peercopy/dist/src/cli/main.js";
  cpio.file(wrapper, Buffer.from(`#!/bin/sh\nexec ${node} ${main} "$@"\n`), 0o755);
  return cpio.finish();
}

/** The kernel and initramfs in cacheDir, built first if missing; with peercopy and node if asked. */
export async function ensureGuest(
  cacheDir: string,
  log: (line: string) => void,
  options: GuestOptions = {},
): Promise<Guest> {
  const base = await baseGuest(cacheDir, log);
  const baseBytes = (await stat(base.initrd)).size;
  if (options.peercopy === undefined) return { ...base, initrdBytes: baseBytes, peercopyBytes: 0 };
  const layer = await peercopyLayer(options.peercopy);
  const key = createHash("sha256").update(layer).digest("hex").slice(0, 12);
  const dir = dirname(base.initrd);
  const initrd = join(dir, `initrd-peercopy-${key}.cpio`);
  if (!existsSync(initrd)) {
    for (const name of await readdir(dir))
      if (/^initrd-peercopy-\w+\.cpio$/.test(name)) await rm(join(dir, name), { force: true });
    const tmp = join(dir, `.${basename(initrd)}.${process.pid}`);
    await writeFile(tmp, Buffer.concat([await readFile(base.initrd), layer]));
    await rename(tmp, initrd);
    log(`node and peercopy added to the initramfs (${(layer.length / 2 ** 20).toFixed(1)} MiB)`);
  }
  return { ...base, initrd, initrdBytes: baseBytes + layer.length, peercopyBytes: layer.length };
}

async function baseGuest(
  cacheDir: string,
  log: (line: string) => void,
): Promise<Omit<Guest, "initrdBytes" | "peercopyBytes">> {
  const init = await readFile(join(import.meta.dirname, "init.sh"), "utf8");
  const pkg = await kernelPackage();
  // This file and the init script say how the guest is built: a change to either builds anew.
  const builder = await readFile(import.meta.filename, "utf8");
  const key = createHash("sha256")
    .update([pkg, init, builder].join("\0"))
    .digest("hex")
    .slice(0, 12);
  const dir = join(cacheDir, `${pkg}-${key}`);
  const guest = (kernel: string) => ({
    kernel: join(dir, kernel),
    initrd: join(dir, "initrd.cpio"),
    kernelVersion: pkg.replace(/^linux-image-/, ""),
  });
  for (const kernel of ["vmlinux", "vmlinuz"]) {
    const cached = guest(kernel);
    if (existsSync(cached.kernel) && existsSync(cached.initrd)) return { ...cached, built: false };
  }

  await mkdir(cacheDir, { recursive: true });
  let kernel = "vmlinuz";
  const work = await mkdtemp(join(cacheDir, "build-"));
  try {
    log(`downloading ${pkg} (kept in ${cacheDir})`);
    const debs = join(cacheDir, "debs");
    await mkdir(debs, { recursive: true });
    // Downloaded beside the build and moved in whole: a build running alongside
    // (the VM tests run side by side) never sees half a package.
    if (!(await readdir(debs)).some((f) => f.startsWith(`${pkg}_`))) {
      await sh("apt-get", ["download", "-q", pkg], work);
      for (const f of await readdir(work))
        if (f.startsWith(`${pkg}_`)) await rename(join(work, f), join(debs, f));
    }
    const deb = (await readdir(debs)).find((f) => f.startsWith(`${pkg}_`));
    if (deb === undefined) throw new Error(`apt-get download ${pkg} left no .deb in ${debs}`);
    log(`extracting the kernel and ${MODULES.length} modules from ${deb}`);
    const root = join(work, "root");
    await mkdir(root);
    await sh("dpkg-deb", ["-x", join(debs, deb), root]);
    const version = (await readdir(join(root, "lib/modules")))[0];
    if (version === undefined) throw new Error(`${deb} carries no modules`);
    // The package ships no modules.dep: depmod makes it from the extracted tree.
    await sh("depmod", ["-b", root, version]);
    const moduleDir = join(root, "lib/modules", version);
    const order = loadOrder(await readFile(join(moduleDir, "modules.dep"), "utf8"));
    const tmp = join(work, "out");
    await mkdir(tmp);
    const bzImage = join(root, "boot", `vmlinuz-${version}`);
    const pvh = await extractVmlinux(bzImage, join(tmp, "vmlinux"));
    if (!pvh) await copyFile(bzImage, join(tmp, "vmlinuz"));
    kernel = pvh ? "vmlinux" : "vmlinuz";
    await buildInitrd(init, moduleDir, order, join(tmp, "initrd.cpio"));
    await rename(tmp, dir).catch(async (err: unknown) => {
      // The same guest, built alongside, got there first: use that one.
      if (existsSync(join(dir, "initrd.cpio")) && existsSync(join(dir, kernel))) return;
      const code = (err as { code?: unknown }).code;
      if (code !== "ENOTEMPTY" && code !== "EEXIST") throw err;
      await rm(dir, { recursive: true, force: true });
      await rename(tmp, dir);
    });
    // Builds for other kernels or init scripts, and older packages, are not needed again.
    for (const name of await readdir(cacheDir))
      if (name.startsWith("linux-image-") && join(cacheDir, name) !== dir)
        await rm(join(cacheDir, name), { recursive: true, force: true });
    for (const name of await readdir(debs))
      if (!name.startsWith(`${pkg}_`)) await rm(join(debs, name), { force: true });
    log(`guest built in ${dir} (${pvh ? "uncompressed vmlinux, PVH entry" : "bzImage"})`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return { ...guest(kernel), built: true };
}
