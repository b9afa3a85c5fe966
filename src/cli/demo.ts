import { mkdir } from "node:fs/promises";
import path from "node:path";
import { startPrimary } from "../controller/primary.js";
import { startSecondary } from "../controller/secondary.js";
import { startAdmin } from "../admin/server.js";
import { Dashboard } from "../admin/dashboard.js";
import { tokenDir } from "./admin-options.js";
import { MirrorMode } from "../mirror/pair.js";
import { createLogger } from "./log.js";
import { stopMessage } from "./pair-options.js";
import { parseCommandLine, waitForSignal } from "./common.js";
import { oneOf, parseListen, parseSize } from "./args.js";

const HELP = `usage: peercopy demo [options]

Runs a secondary and a primary on loopback over sparse files in DIR and
prints how to use them, until SIGINT or SIGTERM.

  --dir DIR           where the images go (default ./var)
  --size SIZE         size of each image when created (default 1G)
  --mode sync|async   replication mode (default sync)
  --listen HOST:PORT  the primary's address for hosts (default 127.0.0.1:10809)
  --remote-listen HOST:PORT
                      the secondary's address (default 127.0.0.1:10810)
  --admin HOST:PORT   the primary's admin API (default 127.0.0.1:10819)`;

const OPTIONS = {
  dir: { type: "string" },
  size: { type: "string" },
  mode: { type: "string" },
  listen: { type: "string" },
  "remote-listen": { type: "string" },
  admin: { type: "string" },
  "log-level": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

export async function demoCommand(args: string[]): Promise<number> {
  const parsed = parseCommandLine({ args, options: OPTIONS, strict: true }, HELP);
  if (parsed === undefined) return 0;
  const { values } = parsed;
  const dir = path.resolve(values.dir ?? "var");
  const size = parseSize(values.size ?? "1G", "--size");
  const mode = oneOf(values.mode ?? "sync", Object.values(MirrorMode), "--mode");
  const listen = parseListen(values.listen ?? "127.0.0.1:10809");
  const remoteListen = parseListen(values["remote-listen"] ?? "127.0.0.1:10810", "--remote-listen");
  const adminAt = parseListen(values.admin ?? "127.0.0.1:10819", "--admin");
  const logger = createLogger(values["log-level"] ?? "warn");
  await mkdir(dir, { recursive: true });

  const secondary = await startSecondary({
    volume: { image: path.join(dir, "secondary.img"), size },
    listen: remoteListen,
    exportName: "",
    replicationExport: "replication",
    logger,
  });
  const primary = await startPrimary({
    volume: { image: path.join(dir, "primary.img"), size },
    listen,
    exportName: "",
    mirror: { remote: secondary.replicationUri, mode },
    logger,
  });
  const admin = await startAdmin({
    host: adminAt.kind === "tcp" ? adminAt.host : "127.0.0.1",
    port: adminAt.kind === "tcp" ? adminAt.port : 0,
    status: primary.status,
    actions: primary.actions,
    dashboard: new Dashboard({ status: primary.status, marks: primary.mirror.tracks }),
    logger,
    tokenDir: tokenDir(),
  });
  const adminServer = admin.server;
  const statusUrl = admin.statusUrl;
  process.stdout.write(`peercopy demo: a ${mode} mirror over ${dir}

  primary   (hosts read and write here)   ${primary.hostUri}
  secondary (read-only to hosts)          ${secondary.hostUri}
  replication stream                      ${secondary.replicationUri}
  status                                  ${statusUrl}
  metrics                                 ${admin.base}/metrics

Mount the primary as a disk (as root; needs nbdfuse and a loop device):
  mkdir -p /tmp/pc && nbdfuse /tmp/pc/disk ${primary.hostUri} &
  L=$(losetup -f --show /tmp/pc/disk); mkfs.ext4 -q $L; mkdir -p /mnt/pc && mount $L /mnt/pc

Benchmark it:    fio --name=w --ioengine=nbd --uri=${primary.hostUri} --rw=randwrite --bs=4k --iodepth=32 --size=256M
Watch the pair:  curl -s ${statusUrl}
Compare sides:   qemu-img compare -f raw -F raw ${primary.hostUri} ${secondary.hostUri}

Press Ctrl-C to stop; the primary drains the link first, and the last line
says what the secondary holds.
`);
  const signal = await waitForSignal();
  process.stdout.write(`\n${signal}: stopping the primary, then the secondary\n`);
  const report = await primary.stop(30_000);
  await adminServer.close();
  await secondary.stop();
  process.stdout.write(`${stopMessage(report)}\n`);
  return 0;
}
