import { main as attach } from "./attach.js";
import { main } from "./experiment.js";

// --attach: peercopy attach/detach in a guest (attach.ts); otherwise the failover experiment.
const argv = process.argv.slice(2);
process.exitCode = await (argv.includes("--attach") ? attach(argv) : main(argv));
