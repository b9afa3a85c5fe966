// Authenticated replication with real processes: a secondary with TLS takes the
// stream only from the primary named by --replication-peer (a PSK identity, a
// certificate CN or fingerprint). Any other identity, even one the secondary's
// TLS accepts, is refused with a reason on both sides and moves no data; hosts
// read over TLS and write only after promotion.
import { X509Certificate } from "node:crypto";
import { open, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectUri } from "../../nbd/client/index.js";
import {
  cleanupControllers,
  controllerTempDir,
  startPrimary,
  startSecondary,
  type Controller,
  type LogRecord,
  type Secondary,
} from "../helpers/controllers.js";
import { makePki, type Pki } from "../helpers/pki.js";
import { describeRun, requireTools, run, runOk } from "../helpers/tools.js";

const ready = requireTools("certtool", "psktool", "qemu-io", "nbdcopy");
const MiB = 1024 * 1024;
const SIZE = "8M";

async function writePattern(uri: string, pattern: number, length: number): Promise<void> {
  const io = await run(
    "qemu-io",
    ["-f", "raw", "-t", "writeback", uri, "-c", `write -P ${pattern} 0 ${length}`],
    { timeoutMs: 30_000 },
  );
  expect(io.exitCode, describeRun(io)).toBe(0);
}

async function head(path: string, length: number): Promise<Buffer> {
  const file = await open(path, "r");
  try {
    const buf = Buffer.alloc(length);
    await file.read(buf, 0, length, 0);
    return buf;
  } finally {
    await file.close();
  }
}

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected a rejection");
}

const refusedHere = (r: LogRecord): boolean => r.msg === "export refused to this client";
const refusedThere = (r: LogRecord): boolean =>
  typeof r.msg === "string" && r.msg.startsWith("the secondary refused this primary");

/** A primary whose credentials the secondary refuses: both logs say why, and nothing arrives. */
async function refusedPrimary(
  dir: string,
  secondary: Secondary,
  remote: string,
  reason: RegExp,
): Promise<void> {
  const before = await head(secondary.image, MiB);
  const seen = secondary.records().filter(refusedHere).length;
  const rogue = await startPrimary({ image: join(dir, `rogue-${seen}.img`), size: SIZE, remote });
  const said = await rogue.waitForLog(refusedThere, "the secondary refused this primary");
  expect(String(said.err)).toMatch(reason);
  const logged = await secondary.waitForLog(
    (r) => refusedHere(r) && secondary.records().filter(refusedHere).indexOf(r) >= seen,
    "export refused to this client",
  );
  expect(String(logged.reason)).toMatch(reason);
  // Host writes on the refused primary stay there (its link never came up).
  await writePattern(rogue.uri, 0xee, MiB);
  const status = await rogue.status();
  expect(status.link.state).not.toBe("up");
  await rogue.stop();
  expect((await head(secondary.image, MiB)).equals(before)).toBe(true);
}

async function promote(secondary: Controller): Promise<void> {
  const reply = await secondary.admin("POST", "/promote", {});
  expect(reply.status, reply.text).toBe(200);
}

describe.skipIf(!ready)("authenticated replication", () => {
  let dir: string;
  let pki: Pki;
  let keys: string;
  let payload: string;

  beforeAll(async () => {
    dir = await controllerTempDir();
    pki = await makePki(join(dir, "pki"));
    keys = join(dir, "pair.psk");
    await runOk("psktool", ["-u", "primary", "-p", keys]);
    await runOk("psktool", ["-u", "host", "-p", keys]);
    payload = join(dir, "payload.img");
    await writeFile(payload, Buffer.alloc(MiB, 0x77));
  }, 60_000);
  afterAll(cleanupControllers);

  it("PSK: only psk:primary replicates; hosts read, and write once promoted", async () => {
    const secondary = await startSecondary({
      image: join(dir, "psk-secondary.img"),
      size: SIZE,
      admin: true,
      extraArgs: ["--tls-psk", keys, "--replication-peer", "psk:primary"],
    });
    const at = (who: string, exp: string): string =>
      `nbds://${who}@127.0.0.1:${secondary.port}/${exp}?tls-psk-file=${keys}`;

    // Another identity in the same PSK file gets TLS but not the replication export.
    const err = await rejection(connectUri(at("host", "replication")));
    expect(err.message).toMatch(
      /NBD_REP_ERR_POLICY: the replication export does not trust the PSK identity "host"/,
    );
    const plain = await rejection(connectUri(`nbd://127.0.0.1:${secondary.port}/replication`));
    expect(plain.message).toMatch(/NBD_REP_ERR_TLS_REQD/);
    await refusedPrimary(dir, secondary, at("host", "replication"), /PSK identity "host"/);

    const primary = await startPrimary({
      image: join(dir, "psk-primary.img"),
      size: SIZE,
      remote: at("primary", "replication"),
    });
    await primary.waitForPairState("full-duplex");
    await writePattern(primary.uri, 0x5a, MiB);
    expect((await head(secondary.image, MiB)).equals(Buffer.alloc(MiB, 0x5a))).toBe(true);

    // A host (identity "host") reads the copy over TLS and cannot write it.
    const copy = join(dir, "psk-copy.img");
    const read = await run("nbdcopy", [at("host", ""), copy]);
    expect(read.exitCode, describeRun(read)).toBe(0);
    expect((await readFile(copy)).subarray(0, MiB).equals(Buffer.alloc(MiB, 0x5a))).toBe(true);
    const write = await run("nbdcopy", [payload, at("host", "")]);
    expect(write.exitCode, describeRun(write)).not.toBe(0);
    expect((await head(secondary.image, MiB))[0]).toBe(0x5a);

    await primary.stopClean();
    await promote(secondary);
    const after = await run("nbdcopy", [payload, at("host", "")]);
    expect(after.exitCode, describeRun(after)).toBe(0);
    expect((await head(secondary.image, MiB))[0]).toBe(0x77);
  }, 120_000);

  it("X.509: only the trusted certificate replicates; hosts need no certificate", async () => {
    const clientCert = await readFile(join(pki.good, "client-cert.pem"));
    const fingerprint = new X509Certificate(clientCert).fingerprint256;
    const secondary = await startSecondary({
      image: join(dir, "x509-secondary.img"),
      size: SIZE,
      extraArgs: [
        "--tls-certificates",
        pki.good,
        "--replication-peer",
        `sha256:${fingerprint.replace(/:/g, "").toLowerCase()}`,
      ],
    });
    const at = (creds: string, exp: string): string =>
      `nbds://127.0.0.1:${secondary.port}/${exp}?tls-certificates=${creds}`;

    // Signed by the CA but another certificate; signed by another CA; none at all.
    await refusedPrimary(
      dir,
      secondary,
      at(pki.intruder, "replication"),
      /does not trust the certificate CN "intruder"/,
    );
    const foreign = await rejection(connectUri(at(pki.foreign, "replication")));
    expect(foreign.message).toMatch(/the client certificate does not chain to the CA/);
    const none = await rejection(connectUri(at(pki.caOnly, "replication")));
    expect(none.message).toMatch(/the replication export needs a client certificate/);
    // libnbd reports the refusal as an errno; the secondary's log says why.
    const refusals = secondary.records().filter(refusedHere).length;
    const nbdinfo = await run("nbdinfo", [at(pki.intruder, "replication")]);
    expect(nbdinfo.exitCode, describeRun(nbdinfo)).not.toBe(0);
    expect(secondary.records().filter(refusedHere).length).toBeGreaterThan(refusals);

    const primary = await startPrimary({
      image: join(dir, "x509-primary.img"),
      size: SIZE,
      remote: at(pki.good, "replication"),
    });
    await primary.waitForPairState("full-duplex");
    await writePattern(primary.uri, 0x3c, MiB);
    expect((await head(secondary.image, MiB)).equals(Buffer.alloc(MiB, 0x3c))).toBe(true);

    // A host with only the CA certificate reads the host export.
    const copy = join(dir, "x509-copy.img");
    const read = await run("nbdcopy", [at(pki.caOnly, ""), copy]);
    expect(read.exitCode, describeRun(read)).toBe(0);
    expect((await readFile(copy)).subarray(0, MiB).equals(Buffer.alloc(MiB, 0x3c))).toBe(true);
    await primary.stopClean();
  }, 120_000);

  it("a secondary with TLS and no --replication-peer does not start", async () => {
    const { PEERCOPY_MAIN } = await import("../helpers/server.js");
    const r = await run(process.execPath, [
      PEERCOPY_MAIN,
      "secondary",
      join(dir, "bad.img"),
      "--size",
      SIZE,
      "--tls-psk",
      keys,
    ]);
    expect(r.exitCode, describeRun(r)).toBe(2);
    expect(r.stderr).toMatch(/name the primary allowed to replicate: --replication-peer psk:/);
  });
});
