// Throw-away TLS credentials made with certtool and psktool (GnuTLS), in the
// directory layouts nbdkit, qemu and libnbd read: ca-cert.pem, server-cert.pem,
// server-key.pem, client-cert.pem, client-key.pem; PSK files "identity:hexkey".
import { cp, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { runOk } from "./tools.js";

export interface Pki {
  /** ca-cert.pem + server-cert.pem/-key.pem (localhost, 127.0.0.1) + client-cert.pem/-key.pem (CN "primary-a"). */
  readonly good: string;
  /** The same layout signed by another CA: a server or client nobody here trusts. */
  readonly rogue: string;
  /** A good CA's server certificate that expired in 2020. */
  readonly expired: string;
  /** Only ca-cert.pem (a client without its own certificate). */
  readonly caOnly: string;
  /** The good CA's ca-cert.pem and a client certificate it signed for CN "intruder". */
  readonly intruder: string;
  /** The good CA's ca-cert.pem and the rogue CA's client certificate (CN "primary-a"). */
  readonly foreign: string;
  /** psktool files: alice's key, eve's key, and alice with a wrong key. */
  readonly psk: { readonly alice: string; readonly eve: string; readonly aliceWrong: string };
  /** A qemu tls-creds-psk directory (keys.psk) for alice. */
  readonly qemuPsk: string;
}

async function certtool(args: readonly string[]): Promise<string> {
  return (await runOk("certtool", args, { timeoutMs: 30_000 })).stdout;
}

async function privkey(path: string): Promise<void> {
  await writeFile(path, await certtool(["--generate-privkey", "--key-type", "ecdsa"]));
}

async function ca(dir: string, name: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await privkey(join(dir, "ca-key.pem"));
  await writeFile(
    join(dir, "ca.info"),
    `cn = ${name}\nca\ncert_signing_key\nexpiration_days = 30\n`,
  );
  await certtool([
    "--generate-self-signed",
    "--load-privkey",
    join(dir, "ca-key.pem"),
    "--template",
    join(dir, "ca.info"),
    "--outfile",
    join(dir, "ca-cert.pem"),
  ]);
}

async function issue(caDir: string, outDir: string, who: string, template: string): Promise<void> {
  await privkey(join(outDir, `${who}-key.pem`));
  const info = join(outDir, `${who}.info`);
  await writeFile(info, template);
  await certtool([
    "--generate-certificate",
    "--load-ca-certificate",
    join(caDir, "ca-cert.pem"),
    "--load-ca-privkey",
    join(caDir, "ca-key.pem"),
    "--load-privkey",
    join(outDir, `${who}-key.pem`),
    "--template",
    info,
    "--outfile",
    join(outDir, `${who}-cert.pem`),
  ]);
}

const SERVER = `cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nsigning_key\nencryption_key\n`;

function client(cn: string): string {
  return `cn = ${cn}\ntls_www_client\nsigning_key\nencryption_key\nexpiration_days = 30\n`;
}

/** Make every credential the TLS tests use under `dir`. */
export async function makePki(dir: string): Promise<Pki> {
  const good = join(dir, "good");
  const rogue = join(dir, "rogue");
  const expired = join(dir, "expired");
  const caOnly = join(dir, "ca-only");
  const qemuPsk = join(dir, "qemu-psk");
  const intruder = join(dir, "intruder");
  const foreign = join(dir, "foreign");
  await Promise.all([ca(good, "peercopy test CA"), ca(rogue, "rogue CA")]);
  await Promise.all([
    issue(good, good, "server", `${SERVER}expiration_days = 30\n`),
    issue(good, good, "client", client("primary-a")),
    issue(rogue, rogue, "server", `${SERVER}expiration_days = 30\n`),
    issue(rogue, rogue, "client", client("primary-a")),
  ]);
  await mkdir(expired, { recursive: true });
  await issue(
    good,
    expired,
    "server",
    `${SERVER}activation_date = "2019-01-01 00:00:00"\nexpiration_date = "2020-01-01 00:00:00"\n`,
  );
  await cp(join(good, "ca-cert.pem"), join(expired, "ca-cert.pem"));
  await mkdir(caOnly, { recursive: true });
  await cp(join(good, "ca-cert.pem"), join(caOnly, "ca-cert.pem"));
  await mkdir(intruder, { recursive: true });
  await issue(good, intruder, "client", client("intruder"));
  await cp(join(good, "ca-cert.pem"), join(intruder, "ca-cert.pem"));
  await mkdir(foreign, { recursive: true });
  await Promise.all(
    ["client-cert.pem", "client-key.pem"].map((f) => cp(join(rogue, f), join(foreign, f))),
  );
  await cp(join(good, "ca-cert.pem"), join(foreign, "ca-cert.pem"));
  const psk = {
    alice: join(dir, "alice.psk"),
    eve: join(dir, "eve.psk"),
    aliceWrong: join(dir, "alice-wrong.psk"),
  };
  await runOk("psktool", ["-u", "alice", "-p", psk.alice]);
  await runOk("psktool", ["-u", "eve", "-p", psk.eve]);
  await runOk("psktool", ["-u", "alice", "-p", psk.aliceWrong]);
  await mkdir(qemuPsk, { recursive: true });
  await cp(psk.alice, join(qemuPsk, "keys.psk"));
  return { good, rogue, expired, caOnly, intruder, foreign, psk, qemuPsk };
}
