// Who may use the admin API. Actions (POST) always need the admin token, sent
// as "Authorization: Bearer TOKEN"; reads (GET) need it too unless they come
// from a loopback address. The token comes from --admin-token-file, or else a
// random one is written, readable by this user only, to a file the CLI verbs
// find by the admin address (as Tor's control cookie or bitcoind's .cookie).
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { lstat, mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { userInfo } from "node:os";
import { isIP } from "node:net";
import { join } from "node:path";

/** A token shorter than this is refused: guessing must stay out of reach. */
export const MIN_TOKEN_LENGTH = 16;

export class AdminAuthError extends Error {
  readonly code = "EADMINAUTH";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "AdminAuthError";
  }
}

/** The admin token the server checks, and the file it came from. */
export interface AdminToken {
  readonly value: string;
  readonly file: string;
  /** Written by this process at start (removed at stop), not given by the operator. */
  readonly generated: boolean;
}

/** Where the token of an admin API at host:port is written in `dir` when no --admin-token-file is given. */
export function defaultTokenFile(dir: string, host: string, port: number): string {
  return join(dir, `admin-${host}-${port}.token`);
}

/** Read a token file: its first line, at least MIN_TOKEN_LENGTH characters. */
export async function readTokenFile(path: string, option = "--admin-token-file"): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new AdminAuthError(`${option} ${path}: ${(err as Error).message}`, { cause: err });
  }
  const token = (text.split("\n")[0] ?? "").trim();
  if (token.length < MIN_TOKEN_LENGTH)
    throw new AdminAuthError(
      `${option} ${path}: the token (its first line) must be at least ${MIN_TOKEN_LENGTH} characters; make one with: openssl rand -hex 32 > ${path}`,
    );
  return token;
}

/** The operator's token file; `warn` hears if others may read it. */
export async function loadAdminToken(
  path: string,
  warn: (message: string) => void,
): Promise<AdminToken> {
  const value = await readTokenFile(path);
  const mode = (await stat(path)).mode;
  if ((mode & 0o077) !== 0)
    warn(`${path} is readable by other users (mode ${(mode & 0o777).toString(8)}): chmod 600 it`);
  return { value, file: path, generated: false };
}

/** Write a fresh random token for host:port, readable by this user only. */
export async function generateAdminToken(
  dir: string,
  host: string,
  port: number,
): Promise<AdminToken> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const info = await lstat(dir);
  const uid = userInfo().uid;
  if (!info.isDirectory() || (uid >= 0 && info.uid !== uid) || (info.mode & 0o077) !== 0)
    throw new AdminAuthError(
      `${dir} must be a directory of this user's that only it can use (chmod 700), to hold the admin token; or give --admin-token-file FILE`,
    );
  await removeStaleTokens(dir);
  const file = defaultTokenFile(dir, host, port);
  const value = randomBytes(32).toString("hex");
  await rm(file, { force: true });
  await writeFile(file, `${value}\n`, { mode: 0o600, flag: "wx" });
  // Beside it, the owner: a killed controller's files are swept by the next one.
  await writeFile(ownerFile(file), `${process.pid}\n`, { mode: 0o600 });
  return { value, file, generated: true };
}

function ownerFile(tokenFile: string): string {
  return tokenFile.replace(/\.token$/, ".pid");
}

/** Remove a generated token file and its owner file. */
export async function removeGeneratedToken(file: string): Promise<void> {
  await rm(file, { force: true });
  await rm(ownerFile(file), { force: true });
}

/** Remove generated token files whose controller is gone (it was killed before it could). */
async function removeStaleTokens(dir: string): Promise<void> {
  const names = (await readdir(dir)).filter((n) => /^admin-.*\.pid$/.test(n));
  for (const name of names) {
    const path = join(dir, name);
    const pid = Number((await readFile(path, "utf8").catch(() => "")).trim());
    if (Number.isInteger(pid) && pid > 0 && alive(pid)) continue;
    await removeGeneratedToken(path.replace(/\.pid$/, ".token"));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: unknown }).code === "EPERM";
  }
}

export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  const bare = address.replace(/^::ffff:/, "");
  if (isIP(bare) === 4) return bare.startsWith("127.");
  return bare === "::1" || address === "localhost";
}

function digest(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

/** Whether an Authorization header carries `token` (compared in constant time). */
export function bearerMatches(header: string | undefined, token: string): boolean {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? "");
  if (match === null) return false;
  return timingSafeEqual(digest(match[1] as string), digest(token));
}
