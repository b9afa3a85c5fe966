// How the benchmarks start peercopy: as its command does, with the node flags the
// first line of the CLI gives (`#!/usr/bin/env -S node FLAGS`), so a benchmark
// measures what `peercopy …` runs.
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { newestSource } from "../sources.mjs";

/** @param {string} repoRoot */
export function peercopyMain(repoRoot) {
  return join(repoRoot, "dist", "src", "cli", "main.js");
}

/**
 * node's arguments for running the CLI at `main` with `args`: its shebang's flags first.
 * @param {string} main
 * @param {string[]} args
 */
export function peercopyArgs(main, args) {
  return [...shebangFlags(main), main, ...args];
}

const cache = new Map();

function shebangFlags(main) {
  if (!cache.has(main)) {
    const first = existsSync(main) ? readFileSync(main, "utf8").split("\n", 1)[0] : "";
    const m = /^#!\/usr\/bin\/env -S node(?<flags>( +\S+)*)\s*$/.exec(first);
    cache.set(main, m?.groups?.flags?.trim().split(/ +/).filter(Boolean) ?? []);
  }
  return cache.get(main);
}

/** Why the build cannot be benchmarked as the sources are (missing or older), if it cannot. */
export function buildProblem(repoRoot) {
  const main = peercopyMain(repoRoot);
  if (!existsSync(main)) return `${main} is missing: run \`npm run build\` first`;
  if (statSync(main).mtimeMs < newestSource(repoRoot))
    return `${main} is older than the sources: run \`npm run build\` first, so the figures belong to the commit they are recorded under`;
  return undefined;
}
