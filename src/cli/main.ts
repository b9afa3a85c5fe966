#!/usr/bin/env node
// Entry point. The thread pool carries every volume read and write, so it is
// sized before anything touches it; the rest loads after.
process.env.UV_THREADPOOL_SIZE ??= "16";
// A reader that went away (`peercopy status --watch | head`) ends the command quietly.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(0);
  throw err;
});
const { run } = await import("./run.js");
// Exit explicitly: a peer that keeps a socket open must not keep the process running.
process.exit(await run(process.argv.slice(2)));
