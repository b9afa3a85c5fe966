import { UsageError } from "./args.js";
import { serveCommand } from "./serve.js";

const USAGE = `usage: peercopy <command> [options]

commands:
  serve IMAGE        serve a volume over NBD (file, block device, or --memory SIZE)

Run "peercopy <command> --help" for the options of a command.`;

type Command = (args: string[]) => Promise<number>;

const COMMANDS: Readonly<Record<string, Command>> = {
  serve: serveCommand,
};

/** Runs a command line; returns the exit code (0 ok, 1 runtime failure, 2 usage error). */
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
      process.stderr.write(`peercopy ${name}: ${err.message}\n`);
      return 2;
    }
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`peercopy ${name}: ${message}\n`);
    return 1;
  }
}
