// The Vagrantfile, checked the way one can without downloading a box:
// `vagrant validate` accepts it (with the libvirt provider's settings checked),
// rejects a copy with a misspelt setting, and the provisioning script parses.
// The copies live in a scratch directory: vagrant writes .vagrant/ beside the
// Vagrantfile and state under VAGRANT_HOME.
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { describeRun, requireTools, run } from "../helpers/tools.js";

const ROOT = resolve(import.meta.dirname, "../..");
const ready = requireTools("vagrant", "bash");

describe.skipIf(!ready)("Vagrantfile", () => {
  let dir = "";
  let env: Record<string, string> = {};

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "peercopy-vagrant-"));
    env = { VAGRANT_HOME: join(dir, "home"), VAGRANT_DEFAULT_PROVIDER: "libvirt" };
  });

  afterAll(async () => {
    if (dir !== "") await rm(dir, { recursive: true, force: true });
  });

  async function copy(name: string, edit: (text: string) => string = (t) => t): Promise<string> {
    const to = join(dir, name);
    await cp(join(ROOT, "scripts/vagrant"), join(to, "scripts/vagrant"), { recursive: true });
    const text = await readFile(join(ROOT, "Vagrantfile"), "utf8");
    await writeFile(join(to, "Vagrantfile"), edit(text));
    return to;
  }

  it("passes vagrant validate", async () => {
    const result = await run("vagrant", ["validate"], { cwd: await copy("ok"), env });
    expect(result.exitCode, describeRun(result)).toBe(0);
    expect(result.stdout).toContain("Vagrantfile validated successfully");
  });

  it("fails vagrant validate with a misspelt provider setting", async () => {
    const to = await copy("bad", (t) => t.replace("lv.memory = MEMORY", "lv.memroy = MEMORY"));
    const result = await run("vagrant", ["validate"], { cwd: to, env });
    expect(result.exitCode, describeRun(result)).not.toBe(0);
    expect(`${result.stdout}${result.stderr}`).toContain("memroy");
  });

  it("defines controllers a and b on the private network the README uses", async () => {
    const vagrantfile = await readFile(join(ROOT, "Vagrantfile"), "utf8");
    const readme = await readFile(join(ROOT, "README.md"), "utf8");
    for (const [name, ip] of [
      ["a", "192.168.56.11"],
      ["b", "192.168.56.12"],
    ]) {
      expect(vagrantfile).toContain(`"${name}" => "${ip}"`);
      expect(readme).toContain(ip);
    }
    const syntax = await run("bash", ["-n", join(ROOT, "scripts/vagrant/provision.sh")]);
    expect(syntax.exitCode, describeRun(syntax)).toBe(0);
  });
});
