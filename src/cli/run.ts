import { UsageError } from "./args.js";
import { serveCommand } from "./serve.js";
import { primaryCommand } from "./primary.js";
import { secondaryCommand } from "./secondary.js";
import { demoCommand } from "./demo.js";
import { controlCommand, controlGroup } from "./control.js";
import { MetadataError } from "../metadata/errors.js";
import { ConfigError } from "../controller/primary.js";
import { attachCommand, detachCommand } from "./attach.js";

const USAGE = `usage: peercopy <command> [options]

commands:
  serve IMAGE        serve a volume over NBD (file, block device, or --memory SIZE)
  primary IMAGE --remote NBD-URI
                     serve hosts and mirror every write to the remote
  secondary IMAGE    the remote controller: read-only to hosts, takes the stream
  demo               a primary and a secondary on loopback over ./var
  status             print a running primary's status (--admin HOST:PORT)
  suspend, resume    stop mirroring / copy the marked tracks and mirror again
  promote [--force]  make a secondary writable for hosts (failover)
  demote             stop host writes on a primary, to restart it as a secondary
  resolve --discard remote|local
                     end a split brain by throwing one side's changes away
  resync --rate RATE change the resync rate limit of a running primary
  verify [--no-resync] [--wait]
                     compare both sides track by track while hosts write
  link set           change a primary's link emulation (latency, faults) at run time
  link cut           close a primary's link connection (it reconnects)
  disk set           change a primary's disk faults (EIO, slow writes) at run time
  attach NBD-URI     attach an export as a block device (/dev/nbdN or /dev/loopN)
  detach DEVICE      undo attach

Run "peercopy <command> --help" for the options of a command.`;

type Command = (args: string[]) => Promise<number>;

/** Commands whose first argument is a second word: `peercopy link set`. */
const GROUPS = new Set(["link", "disk"]);

const COMMANDS: Readonly<Record<string, Command>> = {
  serve: serveCommand,
  primary: primaryCommand,
  secondary: secondaryCommand,
  demo: demoCommand,
  status: controlCommand("status"),
  suspend: controlCommand("suspend"),
  resume: controlCommand("resume"),
  promote: controlCommand("promote"),
  demote: controlCommand("demote"),
  resolve: controlCommand("resolve"),
  resync: controlCommand("resync"),
  verify: controlCommand("verify"),
  link: controlGroup("link"),
  disk: controlGroup("disk"),
  attach: attachCommand,
  detach: detachCommand,
};

/** Runs a command line; returns the exit code (0 ok, 1 runtime failure, 2 usage or configuration error). */
export async function run(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(`${USAGE}\n`);
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  try {
    if (command === undefined)
      throw new UsageError(`unknown command "${name}"; run "peercopy --help"`);
    return await command(rest);
  } catch (err) {
    if (err instanceof UsageError) {
      // An option the command does not know: point at the list of those it does.
      const code = (err.cause as { code?: unknown } | undefined)?.code;
      const hint =
        typeof code === "string" && code.startsWith("ERR_PARSE_ARGS")
          ? `; run "peercopy ${GROUPS.has(name) && rest[0] !== undefined ? `${name} ${rest[0]}` : name} --help" for its options`
          : "";
      process.stderr.write(`peercopy ${name}: ${err.message}${hint}\n`);
      return 2;
    }
    // A metadata file that does not fit, or a remote that can never take the
    // stream: the operator has to change something; retrying would not help.
    if (err instanceof MetadataError || err instanceof ConfigError) {
      process.stderr.write(`peercopy ${name}: ${err.message}\n`);
      return 2;
    }
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`peercopy ${name}: ${message}\n`);
    return 1;
  }
}
