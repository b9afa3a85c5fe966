// `peercopy serve` usage errors: exit code 2 and one line on stderr that names
// what to fix. These are peercopy's own command line, so nbdkit has no stand-in.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { runPeercopy, serverKind, tempDirForTest } from "../helpers/server.js";
import { describeRun, type RunResult } from "../helpers/tools.js";

const isPeercopy = serverKind() === "peercopy";
if (!isPeercopy) console.warn("server-cli: peercopy's command line only; skipped under nbdkit");

function expectUsageError(result: RunResult, names: RegExp): void {
  expect(result.timedOut, describeRun(result)).toBe(false);
  expect(result.exitCode, describeRun(result)).toBe(2);
  const message = result.stderr.trim();
  expect(message.split("\n"), describeRun(result)).toHaveLength(1);
  expect(message, describeRun(result)).toMatch(names);
}

describe.skipIf(!isPeercopy)("peercopy serve usage errors", () => {
  it("rejects a size it cannot parse, naming --size", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "new.img");
    expectUsageError(await runPeercopy(["serve", image, "--size", "12Q"]), /--size/);
    expect(existsSync(image)).toBe(false);
  });

  it("rejects a memory size it cannot parse, naming --memory", async () => {
    expectUsageError(await runPeercopy(["serve", "--memory", "lots"]), /--memory/);
  });

  it("rejects a --listen without a port, naming --listen", async () => {
    const dir = await tempDirForTest();
    expectUsageError(
      await runPeercopy(["serve", "--memory", "1M", "--listen", "nohost"]),
      /--listen/,
    );
    expectUsageError(
      await runPeercopy([
        "serve",
        join(dir, "x.img"),
        "--size",
        "1M",
        "--listen",
        "127.0.0.1:70000",
      ]),
      /--listen/,
    );
  });

  it("asks for --size when the image does not exist", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "missing.img");
    expectUsageError(await runPeercopy(["serve", image]), /--size/);
    expect(existsSync(image)).toBe(false);
  });

  it("rejects an unknown option, naming it", async () => {
    expectUsageError(await runPeercopy(["serve", "--memory", "1M", "--bogus"]), /--bogus/);
  });
});
