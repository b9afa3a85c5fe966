#!/usr/bin/env node
// `npm test`: build, lint, format check, typecheck, then the vitest suite.
// Every step runs even if an earlier one failed, so one run shows everything.
// The last line is the plain summary "N passed, N failed[, N skipped]", where a
// failing build/lint/format/typecheck step counts as one failed test.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";

const root = resolve(import.meta.dirname, "..");
const bin = (name) => join(root, "node_modules", ".bin", name);
const resultsFile = join(root, ".vitest-results.json");
const scratch = mkdtempSync(join(tmpdir(), "peercopy-test-run-"));
const skipReport = join(scratch, "skipped.jsonl");

function step(name, command, args, env = {}) {
  console.log(`\n=== ${name}: ${[relative(root, command) || command, ...args].join(" ")}`);
  const started = Date.now();
  const result = spawnSync(command, args, {
    cwd: root,
    stdio: "inherit",
    env: { ...process.env, ...env },
  });
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const ok = result.status === 0;
  const how = result.error
    ? result.error.message
    : result.signal
      ? `killed by ${result.signal}`
      : `exit ${result.status}`;
  console.log(`=== ${name}: ${ok ? "ok" : `FAILED (${how})`} in ${seconds} s`);
  return ok;
}

const failedSteps = [];
const checks = [
  ["build", bin("tsc"), ["-p", "tsconfig.build.json"]],
  ["lint", bin("eslint"), ["."]],
  ["format", bin("prettier"), ["--check", "."]],
  ["typecheck", bin("tsc"), ["--noEmit"]],
];
for (const [name, command, args] of checks) {
  if (!step(name, command, args)) failedSteps.push(name);
}

rmSync(resultsFile, { force: true });
const vitestOk = step(
  "vitest",
  bin("vitest"),
  ["run", "--reporter=default", "--reporter=json", `--outputFile.json=${resultsFile}`],
  { PEERCOPY_SKIP_REPORT: skipReport },
);

let passed = 0;
let failed = 0;
let skipped = 0;
let report;
if (existsSync(resultsFile)) {
  report = JSON.parse(readFileSync(resultsFile, "utf8"));
  passed = report.numPassedTests;
  failed = report.numFailedTests;
  skipped = report.numPendingTests + report.numTodoTests;
  // A file that fails to load (a syntax error, a missing tool under CI) has no
  // tests to count: count it as one failure.
  for (const file of report.testResults) {
    if (file.status === "failed" && file.assertionResults.every((t) => t.status !== "failed")) {
      failed += 1;
      console.log(`\nFAILED to run ${relative(root, file.name)}:\n${file.message}`);
    }
  }
}
if (!vitestOk && failed === 0) {
  // vitest failed without a failing test: an unhandled error, a crash, no report.
  failedSteps.push("vitest (see its output above)");
}

// Interop tests skipped because a tool is missing must not pass unnoticed.
if (existsSync(skipReport)) {
  const byFile = new Map();
  for (const line of readFileSync(skipReport, "utf8").split("\n")) {
    if (line.trim() === "") continue;
    const { file, missing } = JSON.parse(line);
    byFile.set(file, [...new Set([...(byFile.get(file) ?? []), ...missing])]);
  }
  const bar = "#".repeat(78);
  console.log(`\n${bar}\n# INTEROP TESTS SKIPPED: MISSING TOOLS (install them: see .ci/run)`);
  for (const [file, missing] of byFile) {
    const entry = report?.testResults.find((r) => relative(root, r.name) === file);
    const names = (entry?.assertionResults ?? [])
      .filter((t) => t.status === "skipped" || t.status === "pending")
      .map((t) => t.fullName);
    console.log(`#  ${file} (missing: ${missing.join(", ")})`);
    for (const name of names) console.log(`#    - ${name}`);
  }
  console.log(bar);
}
rmSync(scratch, { recursive: true, force: true });

failed += failedSteps.length;
if (failedSteps.length > 0) console.log(`\nFailed steps: ${failedSteps.join(", ")}`);
console.log(`\n${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ""}`);
process.exitCode = failed > 0 ? 1 : 0;
