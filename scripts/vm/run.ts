import { main } from "./experiment.js";

process.exitCode = await main(process.argv.slice(2));
