#!/usr/bin/env node
// Entry point. The thread pool carries every volume read and write, so it is
// sized before anything touches it; the rest loads after.
process.env.UV_THREADPOOL_SIZE ??= "16";
const { run } = await import("./run.js");
process.exitCode = await run(process.argv.slice(2));
