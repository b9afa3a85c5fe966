// The handshake as nbdinfo sees it: protocol, transmission flags, sizes,
// export name and description, block size constraints, meta contexts, LIST.
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  MAX_PAYLOAD,
  createSparseFile,
  serveForTest,
  serverKind,
  tempDirForTest,
} from "../helpers/server.js";
import { requireTools, runOk } from "../helpers/tools.js";

const ready = requireTools("nbdinfo");
const MiB = 1024 * 1024;

interface NbdinfoExport {
  "export-name": string;
  description?: string;
  contexts?: string[];
  "export-size": number;
  is_read_only: boolean;
  can_cache: boolean;
  can_df: boolean;
  can_fast_zero: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_multi_conn: boolean;
  can_trim: boolean;
  can_zero: boolean;
  block_size_minimum?: number;
  block_size_preferred?: number;
  block_size_maximum?: number;
}

interface NbdinfoReport {
  protocol: string;
  structured: boolean;
  exports: NbdinfoExport[];
}

async function nbdinfo(uri: string, ...extra: string[]): Promise<NbdinfoReport> {
  const result = await runOk("nbdinfo", ["--json", ...extra, uri], { timeoutMs: 20_000 });
  return JSON.parse(result.stdout) as NbdinfoReport;
}

function only(report: NbdinfoReport): NbdinfoExport {
  expect(report.exports).toHaveLength(1);
  const [first] = report.exports;
  if (first === undefined) throw new Error("no export in nbdinfo output");
  return first;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

function expectWritableFlags(exp: NbdinfoExport, fastZero: boolean): void {
  expect({
    is_read_only: exp.is_read_only,
    can_flush: exp.can_flush,
    can_fua: exp.can_fua,
    can_trim: exp.can_trim,
    can_zero: exp.can_zero,
    can_fast_zero: exp.can_fast_zero,
    can_df: exp.can_df,
    can_cache: exp.can_cache,
    can_multi_conn: exp.can_multi_conn,
  }).toEqual({
    is_read_only: false,
    can_flush: true,
    can_fua: true,
    can_trim: true,
    can_zero: true,
    can_fast_zero: fastZero,
    can_df: true,
    can_cache: true,
    can_multi_conn: true,
  });
}

function expectCommon(report: NbdinfoReport, exp: NbdinfoExport): void {
  expect(report.protocol).toBe("newstyle-fixed");
  expect(report.structured).toBe(true);
  expect(exp.contexts ?? []).toContain("base:allocation");
  expect(typeof exp.description).toBe("string");
  expect(exp.description?.length ?? 0).toBeGreaterThan(0);
  // NBD_INFO_BLOCK_SIZE: powers of two, minimum ≤ preferred ≤ maximum, and the
  // maximum is the 32 MiB payload limit.
  const { block_size_minimum: min, block_size_preferred: pref, block_size_maximum: max } = exp;
  expect(min !== undefined && isPowerOfTwo(min) && min <= 65536, `minimum ${String(min)}`).toBe(
    true,
  );
  expect(
    pref !== undefined && isPowerOfTwo(pref) && pref >= (min ?? 0),
    `preferred ${String(pref)}`,
  ).toBe(true);
  expect(max).toBe(MAX_PAYLOAD);
}

describe.skipIf(!ready)(`nbdinfo against ${serverKind()}`, () => {
  it("reports a writable file export with every capability over TCP", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "disk.img");
    await createSparseFile(image, 64 * MiB);
    const server = await serveForTest({ image });
    const report = await nbdinfo(server.uri);
    const exp = only(report);
    expectCommon(report, exp);
    expect(exp["export-size"]).toBe(64 * MiB);
    // nbdkit's file plugin cannot promise a fast zero; peercopy offers it.
    expectWritableFlags(exp, server.kind === "peercopy");
  });

  it("reports a memory export with every capability including fast zero", async () => {
    const server = await serveForTest({ memory: "48M" });
    const report = await nbdinfo(server.uri);
    const exp = only(report);
    expectCommon(report, exp);
    expect(exp["export-size"]).toBe(48 * MiB);
    expectWritableFlags(exp, true);
  });

  it("reports is_read_only with --read-only", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "disk.img");
    await createSparseFile(image, 8 * MiB);
    const server = await serveForTest({ image, readOnly: true });
    const report = await nbdinfo(server.uri);
    const exp = only(report);
    expect(report.protocol).toBe("newstyle-fixed");
    expect(exp.is_read_only).toBe(true);
    expect(exp["export-size"]).toBe(8 * MiB);
    const yes = await runOk("nbdinfo", ["--is", "read-only", server.uri]);
    expect(yes.exitCode).toBe(0);
  });

  it("creates a missing image of --size and serves it", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "new.img");
    const server = await serveForTest({ image, size: "24M" });
    const exp = only(await nbdinfo(server.uri));
    expect(exp["export-size"]).toBe(24 * MiB);
    expect((await stat(image)).size).toBe(24 * MiB);
  });

  it("serves a named export over a unix socket and lists it with its description", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "disk.img");
    await createSparseFile(image, 16 * MiB);
    const server = await serveForTest({ image, transport: "unix", exportName: "vol1" });
    expect(server.uri).toMatch(/^nbd\+unix:\/\/\/vol1\?socket=/);
    const exp = only(await nbdinfo(server.uri));
    expect(exp["export-name"]).toBe("vol1");
    expect(exp["export-size"]).toBe(16 * MiB);

    const listing = await nbdinfo(server.uri, "--list");
    expect(listing.protocol).toBe("newstyle-fixed");
    const listed = listing.exports.find((e) => e["export-name"] === "vol1");
    expect(listed, JSON.stringify(listing)).toBeDefined();
    expect(listed?.["export-size"]).toBe(16 * MiB);
    expect(listed?.description?.length ?? 0).toBeGreaterThan(0);
  });

  it("lists the default export over TCP", async () => {
    const server = await serveForTest({ memory: "4M" });
    const name = only(await nbdinfo(server.uri))["export-name"];
    const listing = await nbdinfo(server.uri, "--list");
    expect(listing.exports.map((e) => e["export-name"])).toContain(name);
    expect(listing.exports.find((e) => e["export-name"] === name)?.["export-size"]).toBe(4 * MiB);
  });

  it("answers single-capability queries the way nbdinfo --can expects", async () => {
    const server = await serveForTest({ memory: "4M" });
    for (const cap of ["flush", "fua", "trim", "zero", "df", "cache", "multi-conn", "write"]) {
      const result = await runOk("nbdinfo", ["--can", cap, server.uri]);
      expect(result.exitCode, cap).toBe(0);
    }
  });
});
