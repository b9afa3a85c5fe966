// Runs before `npm start` and `npm test`: on a fresh checkout it installs the
// dependencies (which builds dist/ and the native addon); later it rebuilds
// dist/ only when a source file is newer than the build.
import { execFileSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import path from "node:path";
import { newestSource } from "./sources.mjs";

const root = path.resolve(import.meta.dirname, "..");
const run = (args) => execFileSync("npm", args, { cwd: root, stdio: "inherit" });

if (!existsSync(path.join(root, "node_modules"))) {
  console.error("peercopy: installing dependencies (npm ci) …");
  run(["ci", "--no-audit", "--no-fund"]);
}

const built = path.join(root, "dist/src/cli/main.js");
const sources = newestSource(root);
if (!existsSync(built) || statSync(built).mtimeMs < sources) run(["run", "build"]);
if (!existsSync(path.join(root, "native/build/Release/fileops.node"))) {
  try {
    run(["run", "build:native"]);
  } catch {
    console.error("peercopy: the native addon did not build; trim and hole reporting fall back");
  }
}
