// --replication-peer: parsing, the checks against the TLS set-up made at start,
// and the decision on each session's TLS peer.
import { describe, expect, it } from "vitest";
import { parseTrustedPeer, trustOnly, type ServerTls, type TlsPeer } from "../../nbd/tls.js";
import { parseTrustedPeers, replicationAuthorizer } from "../../src/cli/tls-options.js";

const FP = "AB:".repeat(31) + "AB";
const psk: ServerTls = {
  mode: "require",
  kind: "psk",
  verifyPeer: false,
  keys: new Map([["primary", Buffer.alloc(32)]]),
  options: {},
};
const x509: ServerTls = { mode: "require", kind: "x509", verifyPeer: false, options: {} };

describe("parseTrustedPeer", () => {
  it("takes cn:, psk: and sha256: with or without colons, in any case", () => {
    expect(parseTrustedPeer("cn:primary-a")).toEqual({ kind: "cn", value: "primary-a" });
    expect(parseTrustedPeer("psk:p:1")).toEqual({ kind: "psk", value: "p:1" });
    expect(parseTrustedPeer(`sha256:${"ab".repeat(32)}`)).toEqual({ kind: "sha256", value: FP });
    expect(parseTrustedPeer(`sha256:${FP.toLowerCase()}`)).toEqual({ kind: "sha256", value: FP });
  });

  it.each([
    ["primary-a", /use cn:NAME, sha256:FINGERPRINT or psk:IDENTITY/],
    ["cn:", /use cn:NAME/],
    ["dns:x", /use cn:NAME/],
    ["sha256:abcd", /32 hex bytes/],
  ])("refuses %s", (text, message) => {
    expect(() => parseTrustedPeer(text)).toThrow(message);
  });
});

describe("replicationAuthorizer", () => {
  const check = (values: string[], tls: ServerTls | undefined) => () =>
    replicationAuthorizer(parseTrustedPeers(values), tls);

  it.each<[string[], ServerTls | undefined, RegExp]>([
    [[], psk, /name the primary allowed to replicate: --replication-peer psk:IDENTITY/],
    [[], x509, /--replication-peer cn:NAME or sha256:FINGERPRINT/],
    [["psk:nobody"], psk, /the PSK file has no key for "nobody"/],
    [["cn:primary-a"], psk, /needs --tls-certificates/],
    [["psk:primary"], x509, /needs --tls-psk/],
    [["psk:primary"], undefined, /needs --tls on or require/],
    [["sha256:12"], x509, /--replication-peer "sha256:12": a SHA-256 fingerprint/],
  ])("%j refused", (values, tls, message) => {
    expect(check(values, tls)).toThrow(message);
  });

  it("without TLS and without peers there is no check", () => {
    expect(check([], undefined)()).toBeUndefined();
  });
});

describe("trustOnly", () => {
  const authorize = trustOnly(
    [parseTrustedPeer("cn:primary-a"), parseTrustedPeer(`sha256:${FP}`), parseTrustedPeer("psk:p")],
    "the replication export",
  );
  const cert = (commonName: string, fingerprint: string, verified = true): TlsPeer => ({
    kind: "x509",
    commonName,
    fingerprint,
    verified,
  });

  it("lets in a trusted CN, fingerprint or PSK identity", () => {
    expect(authorize(cert("primary-a", "00"))).toBeUndefined();
    expect(authorize(cert("other", FP))).toBeUndefined();
    expect(authorize({ kind: "psk", identity: "p" })).toBeUndefined();
  });

  it("says why it refuses everything else", () => {
    expect(authorize(null)).toMatch(/needs TLS with a trusted identity: connect with nbds:\/\//);
    expect(authorize({ kind: "anonymous" })).toMatch(/needs a client certificate/);
    expect(authorize(cert("primary-a", FP, false))).toMatch(/does not chain to the CA/);
    expect(authorize(cert("intruder", "00"))).toMatch(
      /does not trust the certificate CN "intruder" \(sha256 00\)/,
    );
    expect(authorize({ kind: "psk", identity: "primary-a" })).toMatch(
      /does not trust the PSK identity "primary-a"/,
    );
  });
});
