// `peercopy attach URI` and `peercopy detach DEVICE`: an export as a block device.
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseNbdUri } from "../../nbd/uri.js";
import { attach, AttachMethod, detach, listAttachments } from "../attach/attach.js";
import { setSearchPath } from "../attach/programs.js";
import { oneOf, UsageError } from "./args.js";
import { asUsage, parseCommandLine } from "./common.js";

const RUNTIME_HELP = `  --runtime-dir DIR   where attachments are recorded (default $PEERCOPY_RUNTIME_DIR,
                      else /run/peercopy as root, else $XDG_RUNTIME_DIR/peercopy)`;

const ATTACH_HELP = `usage: peercopy attach NBD-URI [--device /dev/nbdN] [options]

Attaches an NBD export as a local block device and prints the device. With the
kernel's nbd module, nbd-client connects /dev/nbdN; without it, nbdfuse
presents the export as a file and a loop device (/dev/loopN) serves it.

  --device DEVICE     /dev/nbdN (kernel) or /dev/loopN (nbdfuse); default the first free
  --method auto|kernel|fuse
                      auto (default): the kernel client where the nbd module exists
${RUNTIME_HELP}

Undo with "peercopy detach DEVICE"; "peercopy detach --list" shows what is attached.`;

const DETACH_HELP = `usage: peercopy detach DEVICE [options]
       peercopy detach --list

Undoes "peercopy attach": refuses while DEVICE is mounted, then disconnects
nbd-client, or detaches the loop device, unmounts nbdfuse and waits for it to exit.

  --list              print the recorded attachments, one per line
${RUNTIME_HELP}`;

function runtimeDir(value: string | undefined): string {
  if (value !== undefined) return value;
  const env = process.env.PEERCOPY_RUNTIME_DIR;
  if (env !== undefined && env !== "") return env;
  if (process.getuid?.() === 0) return "/run/peercopy";
  const xdg = process.env.XDG_RUNTIME_DIR;
  if (xdg !== undefined && xdg !== "") return join(xdg, "peercopy");
  return join(tmpdir(), `peercopy-${process.getuid?.() ?? "user"}`);
}

export async function attachCommand(args: string[]): Promise<number> {
  setSearchPath(process.env.PATH ?? "");
  const parsed = parseCommandLine(
    {
      args,
      options: {
        device: { type: "string" },
        method: { type: "string" },
        "runtime-dir": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      allowPositionals: true,
      strict: true,
    },
    ATTACH_HELP,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  const [uri, ...extra] = positionals;
  if (uri === undefined || extra.length > 0)
    throw new UsageError("give one NBD URI, e.g. nbd://127.0.0.1:10809/");
  asUsage(() => parseNbdUri(uri));
  const method = oneOf(values.method ?? "auto", Object.values(AttachMethod), "--method");
  const attachment = await attach({
    uri,
    method,
    runtimeDir: runtimeDir(values["runtime-dir"]),
    ...(values.device === undefined ? {} : { device: values.device }),
  });
  process.stdout.write(`${attachment.device}\n`);
  return 0;
}

export async function detachCommand(args: string[]): Promise<number> {
  setSearchPath(process.env.PATH ?? "");
  const parsed = parseCommandLine(
    {
      args,
      options: {
        list: { type: "boolean" },
        "runtime-dir": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      allowPositionals: true,
      strict: true,
    },
    DETACH_HELP,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  const dir = runtimeDir(values["runtime-dir"]);
  if (values.list === true) {
    for (const a of await listAttachments(dir))
      process.stdout.write(`${a.device}\t${a.method}\t${a.uri}\n`);
    return 0;
  }
  const [device, ...extra] = positionals;
  if (device === undefined || extra.length > 0)
    throw new UsageError("give one DEVICE, e.g. /dev/nbd0 or /dev/loop3");
  await detach(dir, device);
  return 0;
}
