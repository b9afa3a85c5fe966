import { UsageError } from "./args.js";
import { MetadataError } from "../metadata/errors.js";

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

const control = (verb: string) => async () => (await import("./control.js")).controlCommand(verb);
const group = (name: string) => async () => (await import("./control.js")).controlGroup(name);

// Each command's modules load when it runs: `peercopy attach` or `status` does
// not wait for the controller's (seconds of startup in an emulated guest).
const COMMANDS: Readonly<Record<string, () => Promise<Command>>> = {
  serve: async () => (await import("./serve.js")).serveCommand,
  primary: async () => (await import("./primary.js")).primaryCommand,
  secondary: async () => (await import("./secondary.js")).secondaryCommand,
  demo: async () => (await import("./demo.js")).demoCommand,
  status: control("status"),
  suspend: control("suspend"),
  resume: control("resume"),
  promote: control("promote"),
  demote: control("demote"),
  resolve: control("resolve"),
  resync: control("resync"),
  verify: control("verify"),
  link: group("link"),
  disk: group("disk"),
  attach: async () => (await import("./attach.js")).attachCommand,
  detach: async () => (await import("./attach.js")).detachCommand,
};

/** Runs a command line; returns the exit code (0 ok, 1 runtime failure, 2 usage or configuration error). */
export async function run(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(`${USAGE}\n`);
    return name === undefined ? 2 : 0;
  }
  const load = COMMANDS[name];
  try {
    if (load === undefined)
      throw new UsageError(`unknown command "${name}"; run "peercopy --help"`);
    return await (
      await load()
    )(rest);
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
    // stream (ConfigError, known by its code: its module is the controller's):
    // the operator has to change something; retrying would not help.
    const configError = err instanceof Error && (err as { code?: unknown }).code === "ECONFIG";
    if (err instanceof MetadataError || configError) {
      process.stderr.write(`peercopy ${name}: ${err.message}\n`);
      return 2;
    }
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`peercopy ${name}: ${message}\n`);
    return 1;
  }
}
