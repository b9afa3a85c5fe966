// Usage errors of `peercopy primary`: exit code 2, one line naming the option to
// fix, and nothing created or listened on before the arguments are checked.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, it } from "vitest";
import { cleanupControllers, controllerTempDir } from "../helpers/controllers.js";
import { runPeercopy } from "../helpers/server.js";
import { describeRun } from "../helpers/tools.js";

const REMOTE = ["--remote", "nbd://127.0.0.1:1/replication"];

const cases: { name: string; args: readonly string[]; option: string }[] = [
  { name: "no --remote", args: [], option: "--remote" },
  { name: "--mode semi", args: [...REMOTE, "--mode", "semi"], option: "--mode" },
  { name: "--track-size 3000", args: [...REMOTE, "--track-size", "3000"], option: "--track-size" },
  { name: "--track-size 32M", args: [...REMOTE, "--track-size", "32M"], option: "--track-size" },
  {
    name: "--max-lag with --mode sync",
    args: [...REMOTE, "--mode", "sync", "--max-lag", "64M"],
    option: "--max-lag",
  },
  {
    name: "--max-lag with the default mode",
    args: [...REMOTE, "--max-lag", "2s"],
    option: "--max-lag",
  },
  {
    name: "--on-lag wait",
    args: [...REMOTE, "--mode", "async", "--on-lag", "wait"],
    option: "--on-lag",
  },
  {
    name: "--on-link-loss retry",
    args: [...REMOTE, "--on-link-loss", "retry"],
    option: "--on-link-loss",
  },
];

// Each case is a separate short-lived process: run them side by side.
describe.concurrent("peercopy primary usage errors", () => {
  afterAll(cleanupControllers);

  for (const c of cases) {
    it(`${c.name}: exit 2 naming ${c.option}`, async ({ expect }) => {
      const dir = await controllerTempDir();
      const image = join(dir, "primary.img");
      const result = await runPeercopy([
        "primary",
        image,
        "--size",
        "256M",
        "--listen",
        "127.0.0.1:0",
        ...c.args,
      ]);
      expect(result.exitCode, describeRun(result)).toBe(2);
      const lines = result.stderr.trim().split("\n");
      expect(lines, describeRun(result)).toHaveLength(1);
      expect(lines[0], describeRun(result)).toContain(c.option);
      expect(existsSync(image), "the image was created before the arguments were checked").toBe(
        false,
      );
    });
  }

  it("lists every mirroring option in --help (exit 0)", async ({ expect }) => {
    const result = await runPeercopy(["primary", "--help"]);
    expect(result.exitCode, describeRun(result)).toBe(0);
    for (const option of [
      "--remote",
      "--mode",
      "--track-size",
      "--max-lag",
      "--on-lag",
      "--on-link-loss",
    ])
      expect(result.stdout).toContain(option);
  });
});
