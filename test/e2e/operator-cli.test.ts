// What an operator sees from the command line against a real pair: `peercopy
// status` as a few lines on either admin port (and --json), refusals that name
// the controller to ask instead or what is wrong with the address, and the
// Prometheus metric names: every one the controllers emit is documented in the
// README, and every one the Grafana dashboard queries exists.
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  cleanupControllers,
  controllerTempDir,
  startPrimary,
  startSecondary,
  type Primary,
  type Secondary,
} from "../helpers/controllers.js";
import { freePort } from "../helpers/peers.js";
import { runPeercopy } from "../helpers/server.js";
import { describeRun } from "../helpers/tools.js";

const ROOT = resolve(import.meta.dirname, "../..");

function hostPort(url: string | undefined): string {
  if (url === undefined) throw new Error("started without --admin");
  return url.replace(/^http:\/\//, "");
}

/** The metric names in a /metrics text. */
async function metricNames(c: Primary | Secondary): Promise<Set<string>> {
  const reply = await c.admin("GET", "/metrics");
  const names = reply.text
    .split("\n")
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map((l) => /^[a-z0-9_]+/.exec(l)?.[0] ?? l);
  return new Set(names);
}

/** The names the README's metrics list gives, with `a_{b,c}` spelled out. */
async function documentedNames(): Promise<Set<string>> {
  const readme = await readFile(resolve(ROOT, "README.md"), "utf8");
  const from = readme.indexOf("### Prometheus metrics and Grafana");
  const section = readme.slice(from, readme.indexOf("\n## ", from));
  const names = new Set<string>();
  for (const [, code = ""] of section.matchAll(/`(peercopy_[^`]+)`/g)) {
    // `a_{b,c}` is a_b and a_c; `a_info{role}` names the labels of a_info.
    const m = /^([a-z0-9_]*)\{([a-z0-9_,]+)\}$/.exec(code);
    const stem = m?.[1] ?? code;
    if (m === null || !stem.endsWith("_")) names.add(stem);
    else for (const tail of (m[2] ?? "").split(",")) names.add(`${stem}${tail}`);
  }
  return names;
}

describe("operator's command line against a real pair", () => {
  let secondary: Secondary | undefined;
  let primary: Primary | undefined;

  beforeAll(async () => {
    const dir = await controllerTempDir();
    secondary = await startSecondary({
      image: resolve(dir, "s.img"),
      size: "64M",
      admin: true,
      keepAfterTest: true,
    });
    primary = await startPrimary({
      image: resolve(dir, "p.img"),
      size: "64M",
      remote: secondary.replicationUri,
      extraArgs: ["--link-emulation", "--disk-faults"],
      keepAfterTest: true,
    });
    await primary.waitForPairState("full-duplex");
  });
  afterAll(cleanupControllers);

  function pair(): { p: Primary; s: Secondary } {
    if (primary === undefined || secondary === undefined) throw new Error("beforeAll failed");
    return { p: primary, s: secondary };
  }

  it("status prints a few lines on either admin port, --json the status itself", async () => {
    const { p, s } = pair();
    const text = await runPeercopy(["status", "--admin", hostPort(p.adminUrl)]);
    expect(text.exitCode, describeRun(text)).toBe(0);
    const lines = text.stdout.trimEnd().split("\n");
    expect(lines[0]).toBe(`primary ${p.uri} (file ${p.image}, 64.0 MiB, 0 connections)`);
    expect(lines).toContain("  pair        full-duplex");
    expect(lines).toContain("  out of sync 0 tracks of 1024 (0 B)");
    expect(lines).toContain("  emulated    link: nothing set; disk: nothing set");
    expect(text.stdout, "colour on a pipe").not.toContain("\u001b[");
    expect(lines.length).toBeLessThan(16);

    const json = await runPeercopy(["status", "--json", "--admin", hostPort(p.adminUrl)]);
    expect(json.exitCode, describeRun(json)).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ role: "primary", pairState: "full-duplex" });

    const sec = await runPeercopy(["status", "--admin", hostPort(s.adminUrl)]);
    expect(sec.exitCode, describeRun(sec)).toBe(0);
    expect(sec.stdout).toMatch(/^secondary nbd:\/\/127\.0\.0\.1:\d+\/ /);
    expect(sec.stdout).toMatch(/\n {2}primary {5}last request \d+ ms ago\n/);
  });

  it("a verb sent to the wrong controller names the one that runs it", async () => {
    const { p, s } = pair();
    const promote = await runPeercopy(["promote", "--admin", hostPort(p.adminUrl)]);
    expect(promote.exitCode, describeRun(promote)).toBe(1);
    expect(promote.stderr.trim()).toBe(
      `peercopy promote: promote: the controller at ${p.adminUrl} is a primary; promote runs on a secondary's admin port (give that one with --admin HOST:PORT)`,
    );
    const suspend = await runPeercopy(["suspend", "--admin", hostPort(s.adminUrl)]);
    expect(suspend.exitCode, describeRun(suspend)).toBe(1);
    expect(suspend.stderr).toContain(
      `the controller at ${s.adminUrl} is a secondary; suspend runs on a primary's admin port`,
    );
    const stillInSync = await p.status();
    expect(stillInSync.pairState).toBe("full-duplex");
  });

  it("an address with nothing there, or an NBD port, says so", async () => {
    const { p } = pair();
    const port = await freePort();
    const none = await runPeercopy(["status", "--admin", `127.0.0.1:${port}`]);
    expect(none.exitCode, describeRun(none)).toBe(1);
    expect(none.stderr).toContain(
      `cannot reach the admin API at http://127.0.0.1:${port}: connection refused (nothing listens there)`,
    );
    const nbd = await runPeercopy(["status", "--admin", `127.0.0.1:${p.port}`]);
    expect(nbd.exitCode, describeRun(nbd)).toBe(1);
    expect(nbd.stderr).toMatch(/does not speak HTTP \(an NBD port\?\)|not JSON/);
    const option = await runPeercopy(["status", "--colour"]);
    expect(option.exitCode, describeRun(option)).toBe(2);
    expect(option.stderr.trim()).toBe(
      `peercopy status: Unknown option '--colour'; run "peercopy status --help" for its options`,
    );
  });

  it("every metric emitted is in the README, every one the Grafana dashboard queries is emitted", async () => {
    const { p, s } = pair();
    const documented = await documentedNames();
    const emitted = new Set([...(await metricNames(p)), ...(await metricNames(s))]);
    expect(emitted.size).toBeGreaterThan(60);
    expect([...emitted].filter((n) => !documented.has(n))).toEqual([]);
    const grafana = await readFile(resolve(ROOT, "docs/grafana-dashboard.json"), "utf8");
    const dashboard = JSON.parse(grafana) as { panels: { targets?: { expr: string }[] }[] };
    const queried = new Set(
      dashboard.panels
        .flatMap((panel) => panel.targets ?? [])
        .flatMap((t) => [...t.expr.matchAll(/peercopy_[a-z0-9_]+/g)].map((m) => m[0])),
    );
    expect(queried.size).toBeGreaterThan(20);
    expect([...queried].filter((n) => !emitted.has(n))).toEqual([]);
  });

  it("a demoted primary refuses resume and verify, saying what to do", async () => {
    const { p } = pair();
    const demote = await runPeercopy(["demote", "--admin", hostPort(p.adminUrl)]);
    expect(demote.exitCode, describeRun(demote)).toBe(0);
    for (const verb of ["resume", "verify"]) {
      const r = await runPeercopy([verb, "--admin", hostPort(p.adminUrl)]);
      expect(r.exitCode, describeRun(r)).toBe(1);
      expect(r.stderr).toContain(
        `this primary was demoted: it mirrors nothing and takes no host writes, so there is nothing to ${verb}; restart this volume as a secondary`,
      );
    }
  });
});
