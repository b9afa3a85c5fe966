// The admin token: reading it, generating one, and checking a request's header.
import { existsSync } from "node:fs";
import { mkdtemp, readFile, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  bearerMatches,
  defaultTokenFile,
  generateAdminToken,
  isLoopback,
  readTokenFile,
} from "../../src/admin/auth.js";

const TOKEN = "a".repeat(32);

describe("admin token", () => {
  it("matches only the exact bearer token", () => {
    expect(bearerMatches(`Bearer ${TOKEN}`, TOKEN)).toBe(true);
    expect(bearerMatches(`bearer ${TOKEN} `, TOKEN)).toBe(true);
    expect(bearerMatches(`Bearer ${TOKEN}x`, TOKEN)).toBe(false);
    expect(bearerMatches(`Basic ${TOKEN}`, TOKEN)).toBe(false);
    expect(bearerMatches(undefined, TOKEN)).toBe(false);
    expect(bearerMatches("Bearer", TOKEN)).toBe(false);
  });

  it("knows loopback addresses", () => {
    for (const a of ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "localhost"])
      expect(isLoopback(a), a).toBe(true);
    for (const a of ["10.0.0.1", "0.0.0.0", "::", "::ffff:10.0.0.1", undefined])
      expect(isLoopback(a), String(a)).toBe(false);
  });

  it("reads the first line of a token file and refuses short ones", async () => {
    const dir = await mkdtemp(join(tmpdir(), "peercopy-token-"));
    const good = join(dir, "good");
    await writeFile(good, `  ${TOKEN}  \nignored\n`);
    expect(await readTokenFile(good)).toBe(TOKEN);
    const short = join(dir, "short");
    await writeFile(short, "0123456789\n");
    await expect(readTokenFile(short)).rejects.toThrow(/at least 16 characters.*openssl rand/);
    await expect(readTokenFile(join(dir, "none"))).rejects.toThrow(/--admin-token-file .*none/);
  });

  it("generates a token only its user can read, where the CLI looks", async () => {
    const dir = join(await mkdtemp(join(tmpdir(), "peercopy-token-")), "run");
    const token = await generateAdminToken(dir, "127.0.0.1", 4242);
    expect(token.file).toBe(defaultTokenFile(dir, "127.0.0.1", 4242));
    expect((await readFile(token.file, "utf8")).trim()).toBe(token.value);
    expect(token.value).toMatch(/^[0-9a-f]{64}$/);
    expect((await stat(token.file)).mode & 0o777).toBe(0o600);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
  });

  it("sweeps the files of controllers that are gone, and only those", async () => {
    const dir = join(await mkdtemp(join(tmpdir(), "peercopy-token-")), "run");
    const mine = await generateAdminToken(dir, "127.0.0.1", 1);
    // A pid far above any pid_max: no such process.
    const gone = defaultTokenFile(dir, "127.0.0.1", 2);
    await writeFile(gone, `${TOKEN}\n`, { mode: 0o600 });
    await writeFile(gone.replace(/\.token$/, ".pid"), "99999999\n");
    const operators = defaultTokenFile(dir, "127.0.0.1", 3);
    await writeFile(operators, `${TOKEN}\n`, { mode: 0o600 });
    await generateAdminToken(dir, "127.0.0.1", 4);
    expect(existsSync(mine.file)).toBe(true);
    expect(existsSync(gone)).toBe(false);
    expect(existsSync(gone.replace(/\.token$/, ".pid"))).toBe(false);
    expect(existsSync(operators)).toBe(true);
  });
});
