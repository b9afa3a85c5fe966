#!/usr/bin/env -S node --initial-old-space-size=64
// Entry point. The thread pool carries every volume read and write, so it is
// sized before anything touches it; the rest loads after.
//
// The node flag on the first line: a controller's heap is small (about 10 MB), but
// the socket and payload buffers it turns over count against V8's old-generation
// limit, which a small heap keeps low. Without a floor under that limit, 1 MiB
// writes through a primary cost a full garbage collection every 40 ms (a third of
// its CPU time); with a 64 MB floor, 2 in a run that had about 100. Run the CLI
// through this line (the `peercopy` bin, after `npm link`) or give node the flag.
process.env.UV_THREADPOOL_SIZE ??= "16";
// A reader that went away (`peercopy status --watch | head`) ends the command quietly.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(0);
  throw err;
});
const { run } = await import("./run.js");
// Exit explicitly: a peer that keeps a socket open must not keep the process running.
process.exit(await run(process.argv.slice(2)));
