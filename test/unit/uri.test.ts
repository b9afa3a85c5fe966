import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { NbdUriError, formatNbdUri, parseNbdUri, type NbdUri } from "../../nbd/uri.js";

function errorOf(uri: string, options?: { allowTls?: boolean }): NbdUriError {
  try {
    parseNbdUri(uri, options);
  } catch (err) {
    expect(err).toBeInstanceOf(NbdUriError);
    return err as NbdUriError;
  }
  throw new Error(`"${uri}" parsed without error`);
}

describe("parseNbdUri", () => {
  it.each([
    ["nbd://example.com", "example.com", 10809, ""],
    ["nbd://example.com/", "example.com", 10809, ""],
    ["nbd://example.com/disk", "example.com", 10809, "disk"],
    ["nbd://example.com//disk", "example.com", 10809, "/disk"],
    ["nbd://example.com/hello%20world", "example.com", 10809, "hello world"],
    ["nbd://127.0.0.1:10900/a/b", "127.0.0.1", 10900, "a/b"],
    ["nbd://[::1]:2000/x", "::1", 2000, "x"],
    ["nbd://[fe80::1]/", "fe80::1", 10809, ""],
    ["nbd://host:/e", "host", 10809, "e"],
    ["NBD://Host/e", "Host", 10809, "e"],
    ["nbd://user@host/e", "host", 10809, "e"],
    ["nbd://host/%E2%82%AC", "host", 10809, "€"],
    ["nbd://host/e#fragment", "host", 10809, "e"],
  ])("%s → TCP %s:%i export %j", (uri, host, port, exportName) => {
    expect(parseNbdUri(uri)).toEqual({
      endpoint: { kind: "tcp", host, port },
      exportName,
      tls: false,
      params: {},
    });
  });

  it.each([
    ["nbd+unix:///disk?socket=/tmp/nbd.sock", "/tmp/nbd.sock", "disk"],
    ["nbd+unix:///?socket=sock", "sock", ""],
    ["nbd+unix://?socket=/a%20b/s", "/a b/s", ""],
    ["nbd+unix:///?socket=%00/abstract", "\0/abstract", ""],
  ])("%s → unix %j export %j", (uri, path, exportName) => {
    expect(parseNbdUri(uri)).toEqual({
      endpoint: { kind: "unix", path },
      exportName,
      tls: false,
      params: {},
    });
  });

  it("keeps experimental x- parameters", () => {
    expect(parseNbdUri("nbd://h/e?x-foo=1").params).toEqual({ "x-foo": "1" });
  });

  it("refuses TLS schemes with a clear error unless allowed", () => {
    const err = errorOf("nbds://example.com/disk");
    expect(err.code).toBe("EURI");
    expect(err.message).toMatch(/TLS not supported yet/);
    expect(errorOf("nbds+unix:///?socket=s").message).toMatch(/TLS not supported yet/);
    const tls = parseNbdUri("nbds://h/e?tls-verify-peer=0", { allowTls: true });
    expect(tls.tls).toBe(true);
    expect(tls.params).toEqual({ "tls-verify-peer": "0" });
  });

  it("takes the PSK user name from nbds://USER@host, as libnbd does", () => {
    const uri = parseNbdUri("nbds://al%69ce@h:1/e?tls-psk-file=k.psk", { allowTls: true });
    expect(uri.username).toBe("alice");
    expect(uri.endpoint).toEqual({ kind: "tcp", host: "h", port: 1 });
    expect(parseNbdUri("nbd://bob@h/e").username).toBeUndefined();
  });

  it.each([
    ["http://example.com/", /unknown scheme "http"/],
    ["nbd+vsock:///", /AF_VSOCK/],
    ["nbd:example.com", /expected "nbd:\/\/host/],
    ["nbd:///disk", /needs a host/],
    ["nbd://host:99999/", /out of range/],
    ["nbd://host:0/", /out of range/],
    ["nbd://host:12ab/", /not a number/],
    ["nbd://[::1/", /unterminated IPv6/],
    ["nbd://::1/", /brackets/],
    ["nbd://host/%zz", /percent-encoding in the export name/],
    ["nbd://host/a%00b", /NUL/],
    ["nbd://host/?socket=/s", /only valid with nbd\+unix/],
    ["nbd+unix:///disk", /needs a socket=PATH/],
    ["nbd+unix:///disk?socket=", /needs a socket=PATH/],
    ["nbd+unix://host/disk?socket=/s", /takes no host/],
    ["nbd://host/?frobnicate=1", /unknown query parameter "frobnicate"/],
    ["nbd://host/?x-a=1&x-a=2", /given twice/],
    ["nbd://host/?tls-hostname=h", /needs a TLS scheme/],
    [`nbd://host/${"a".repeat(4097)}`, /longer than 4096 bytes/],
  ])("rejects %s", (uri, message) => {
    const err = errorOf(uri);
    expect(err.code).toBe("EURI");
    expect(err.message).toContain(uri.slice(0, 40));
    expect(err.message).toMatch(message);
  });
});

describe("formatNbdUri", () => {
  it.each([
    [{ kind: "tcp", host: "127.0.0.1", port: 10809 }, "", "nbd://127.0.0.1/"],
    [{ kind: "tcp", host: "127.0.0.1", port: 2000 }, "disk", "nbd://127.0.0.1:2000/disk"],
    [{ kind: "tcp", host: "::1", port: 2000 }, "a b", "nbd://[::1]:2000/a%20b"],
    [{ kind: "tcp", host: "h", port: 10809 }, "/x?y#z", "nbd://h//x%3Fy%23z"],
    [{ kind: "unix", path: "/run/nbd.sock" }, "e", "nbd+unix:///e?socket=/run/nbd.sock"],
    [{ kind: "unix", path: "/a&b=c" }, "", "nbd+unix:///?socket=/a%26b%3Dc"],
  ] as const)("%j %j → %s", (endpoint, exportName, uri) => {
    expect(formatNbdUri({ endpoint, exportName })).toBe(uri);
  });

  const name = fc.string({ unit: "binary", maxLength: 40 }).filter((s) => !s.includes("\0"));
  const host = fc.oneof(
    fc.ipV4(),
    fc.ipV6(),
    fc.domain(),
    fc.string({ minLength: 1, maxLength: 20 }).filter((s) => !/[:\0[\]]/.test(s)),
  );
  const uri: fc.Arbitrary<NbdUri> = fc.record({
    endpoint: fc.oneof(
      fc.record({
        kind: fc.constant("tcp" as const),
        host,
        port: fc.integer({ min: 1, max: 65535 }),
      }),
      fc.record({
        kind: fc.constant("unix" as const),
        path: fc.string({ unit: "binary", minLength: 1, maxLength: 40 }),
      }),
    ),
    exportName: name,
    tls: fc.boolean(),
    params: fc.dictionary(
      fc.string({ minLength: 1, maxLength: 8 }).map((s) => `x-${s}`),
      fc.string({ unit: "binary", maxLength: 10 }),
      { maxKeys: 3 },
    ),
  });

  fcTest.prop([uri])("parse(format(u)) gives back u", (u) => {
    expect(parseNbdUri(formatNbdUri(u), { allowTls: true })).toEqual(u);
  });
});
