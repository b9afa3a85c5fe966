// The admin API's token and HTTPS, with real processes: actions need the token
// (the operator's --admin-token-file, or the file the controller writes for its
// address, which the CLI verbs find), reads are open on loopback, and a wrong or
// missing token is refused with a reason on both sides without doing anything.
import { stat, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  cleanupControllers,
  controllerTempDir,
  startSecondary,
  type LogRecord,
} from "../helpers/controllers.js";
import { makePki, type Pki } from "../helpers/pki.js";
import { PEERCOPY_MAIN } from "../helpers/server.js";
import { describeRun, requireTools, run } from "../helpers/tools.js";

const ready = requireTools("certtool", "psktool");
const TOKEN = "0123456789abcdef0123456789abcdef";

function peercopy(args: string[]) {
  return run(process.execPath, [PEERCOPY_MAIN, ...args], { timeoutMs: 30_000 });
}

const refused = (r: LogRecord): boolean => r.msg === "admin request refused";

describe.skipIf(!ready)("admin API authentication", () => {
  let dir: string;
  let pki: Pki;
  let tokenFile: string;

  beforeAll(async () => {
    dir = await controllerTempDir();
    pki = await makePki(join(dir, "pki"));
    tokenFile = join(dir, "admin.token");
    await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  }, 60_000);
  afterAll(cleanupControllers);

  it("without --admin-token-file: a generated token, found by the CLI verbs", async () => {
    const secondary = await startSecondary({ image: join(dir, "a.img"), size: "4M", admin: true });
    const record = await secondary.waitForLog((r) => r.msg === "admin API", "admin API");
    const generated = String(record.tokenFile);
    expect((await stat(generated)).mode & 0o777).toBe(0o600);
    const address = (secondary.adminUrl ?? "").replace("http://", "");

    // Reads stay open on loopback; actions without the token are refused and logged.
    const status = await fetch(`${secondary.adminUrl}/status`);
    expect(status.status).toBe(200);
    const bare = await fetch(`${secondary.adminUrl}/promote`, { method: "POST", body: "{}" });
    expect(bare.status).toBe(401);
    expect(bare.headers.get("www-authenticate")).toMatch(/^Bearer/);
    expect(((await bare.json()) as { error: string }).error).toMatch(
      /actions need the admin token: send "Authorization: Bearer TOKEN"/,
    );
    const logged = await secondary.waitForLog(refused, "admin request refused");
    expect(logged).toMatchObject({ method: "POST", path: "/promote" });

    // The CLI verb finds the generated file: past the token, the promotion itself answers.
    const promote = await peercopy(["promote", "--admin", address]);
    expect(promote.exitCode, describeRun(promote)).toBe(1);
    expect(promote.stderr).toMatch(/never completed a copy from a primary/);
    const wrong = await peercopy(["promote", "--admin", address, "--admin-token-file", tokenFile]);
    expect(wrong.exitCode, describeRun(wrong)).toBe(1);
    expect(wrong.stderr).toMatch(/POST \/promote: the admin token is wrong/);
    expect(
      ((await (await fetch(`${secondary.adminUrl}/status`)).json()) as { role: string }).role,
    ).toBe("secondary");

    await secondary.stopClean();
    expect(existsSync(generated)).toBe(false);
  });

  it("--admin-token-file and HTTPS with --admin-tls-certificates", async () => {
    const secondary = await startSecondary({
      image: join(dir, "b.img"),
      size: "4M",
      admin: true,
      extraArgs: ["--admin-token-file", tokenFile, "--admin-tls-certificates", pki.good],
    });
    const record = await secondary.waitForLog((r) => r.msg === "admin API", "admin API");
    expect(record).toMatchObject({ tokenFile, tls: true });
    const url = String(record.status);
    expect(url).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/status$/);
    const address = url.replace(/^https:\/\//, "").replace(/\/status$/, "");
    const tls = ["--admin", address, "--admin-tls-certificates", pki.caOnly];

    const status = await peercopy(["status", ...tls]);
    expect(status.exitCode, describeRun(status)).toBe(0);
    expect(status.stdout).toMatch(/secondary/);
    // Plain HTTP to the HTTPS port, and HTTPS without the CA, do not get through.
    const plain = await peercopy(["status", "--admin", address]);
    expect(plain.exitCode, describeRun(plain)).not.toBe(0);
    const untrusted = await peercopy([
      "status",
      "--admin",
      address,
      "--admin-tls-certificates",
      pki.rogue,
    ]);
    expect(untrusted.exitCode, describeRun(untrusted)).not.toBe(0);
    expect(untrusted.stderr).toMatch(/cannot reach the admin API at https:/);

    const none = await peercopy(["promote", "--force", ...tls]);
    expect(none.exitCode, describeRun(none)).toBe(1);
    expect(none.stderr).toMatch(/the admin token|need the admin token/);
    const promoted = await peercopy([
      "promote",
      "--force",
      ...tls,
      "--admin-token-file",
      tokenFile,
    ]);
    expect(promoted.exitCode, describeRun(promoted)).toBe(0);
    expect(promoted.stdout).toMatch(/"role": "primary"/);
    await secondary.stopClean();
  });

  it("start-up refuses an admin API that cannot be protected", async () => {
    const image = join(dir, "c.img");
    const short = join(dir, "short.token");
    await writeFile(short, "abc\n");
    const cases: [string[], RegExp][] = [
      [["--admin", "0.0.0.0:0"], /is off loopback: give --admin-token-file FILE/],
      [["--admin", "127.0.0.1:0", "--admin-token-file", short], /at least 16 characters/],
      [
        ["--admin", "127.0.0.1:0", "--admin-tls-certificates", pki.caOnly],
        /server-cert\.pem is missing/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = await peercopy([
        "secondary",
        image,
        "--size",
        "4M",
        "--listen",
        "127.0.0.1:0",
        ...args,
      ]);
      expect(r.exitCode, describeRun(r)).toBe(2);
      expect(r.stderr).toMatch(message);
    }
  });
});
