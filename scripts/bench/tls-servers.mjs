// peercopy and nbdkit serving the same image with the same TLS set-up: TLS
// required, X.509 with one ECDSA P-256 server certificate (certtool, made once
// per benchmark run in the image directory), no client certificate. fio's nbd
// engine (libnbd, GnuTLS) connects with nbds://…?tls-verify-peer=false: it refuses
// URIs that name local files (tls-certificates=), and libnbd's default directory
// for root is the system's /etc/pki/libnbd. Checking the certificate is a cost
// of the handshake only, the same for both servers; the records are encrypted
// all the same.
import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { runSync } from "./proc.mjs";
import { buildProblem, peercopyArgs, peercopyMain } from "./peercopy-cli.mjs";

const START_TIMEOUT_MS = 15_000;

/** @type {Map<string, { server: string }>} */
const made = new Map();

/** The server's credential directory under `dir`, made once. */
async function pki(dir) {
  const done = made.get(dir);
  if (done !== undefined) return done;
  const root = join(dir, "tls");
  const server = join(root, "server");
  await mkdir(server, { recursive: true });
  const certtool = (args) => {
    const out = runSync("certtool", args);
    if (out === undefined) throw new Error(`certtool ${args.join(" ")} failed`);
    return out;
  };
  // ECDSA on certtool's default curve, P-256.
  const key = (path) =>
    writeFile(path, `${certtool(["--generate-privkey", "--key-type", "ecdsa"])}\n`);
  await key(join(root, "ca-key.pem"));
  await writeFile(
    join(root, "ca.info"),
    "cn = bench CA\nca\ncert_signing_key\nexpiration_days = 30\n",
  );
  certtool(
    ["--generate-self-signed", "--load-privkey", join(root, "ca-key.pem")].concat([
      "--template",
      join(root, "ca.info"),
      "--outfile",
      join(server, "ca-cert.pem"),
    ]),
  );
  await key(join(server, "server-key.pem"));
  await writeFile(
    join(root, "server.info"),
    "cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nsigning_key\nencryption_key\nexpiration_days = 30\n",
  );
  certtool(
    ["--generate-certificate", "--load-ca-certificate", join(server, "ca-cert.pem")].concat([
      "--load-ca-privkey",
      join(root, "ca-key.pem"),
      "--load-privkey",
      join(server, "server-key.pem"),
      "--template",
      join(root, "server.info"),
      "--outfile",
      join(server, "server-cert.pem"),
    ]),
  );
  const dirs = { server };
  made.set(dir, dirs);
  return dirs;
}

/** @type {import("./servers.mjs").ServerDef[]} */
export const TLS_SERVERS = [
  {
    name: "peercopy-tls",
    group: "serve-tls",
    role: "subject",
    description: "peercopy serve --tls require, X.509 (ECDSA P-256)",
    images: ["disk"],
    tools: ["certtool"],
    check: ({ repoRoot }) => buildProblem(repoRoot),
    async start(env) {
      const creds = await pki(env.workDir);
      const port = await env.freePort();
      const proc = env.spawn(
        process.execPath,
        peercopyArgs(peercopyMain(env.repoRoot), ["serve", env.images.disk])
          .concat(["--listen", `127.0.0.1:${port}`])
          .concat(["--tls", "require", "--tls-certificates", creds.server]),
        { name: "peercopy serve --tls require" },
      );
      await proc.waitForLine((l) => l.includes('"msg":"listening"'), START_TIMEOUT_MS);
      return {
        uri: `nbds://127.0.0.1:${port}/?tls-verify-peer=false`,
        pids: [proc.pid],
        commands: [proc.command],
        stop: () => proc.stop(),
      };
    },
  },
  {
    name: "nbdkit-tls",
    group: "serve-tls",
    role: "reference",
    description: "nbdkit --tls=require, the same certificate, file plugin (default threads)",
    images: ["disk"],
    tools: ["nbdkit", "certtool"],
    async start(env) {
      const creds = await pki(env.workDir);
      const port = await env.freePort();
      const pidFile = join(env.workDir, `nbdkit-tls-${port}.pid`);
      const proc = env.spawn(
        "nbdkit",
        ["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p", String(port), "-P", pidFile]
          .concat(["--tls=require", `--tls-certificates=${creds.server}`])
          .concat(["file", env.images.disk]),
        { name: "nbdkit --tls=require" },
      );
      await proc.waitForFile(pidFile, START_TIMEOUT_MS);
      return {
        uri: `nbds://127.0.0.1:${port}/?tls-verify-peer=false`,
        pids: [proc.pid],
        commands: [proc.command],
        stop: () => proc.stop().then(() => rm(pidFile, { force: true })),
      };
    },
  },
];
