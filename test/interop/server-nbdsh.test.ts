// Scripted libnbd clients: bad requests that must get an error reply while the
// connection lives on, old-style handshakes, the option phase alone, block
// status, and a read-only export refusing writes.
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createSparseFile, serveForTest, serverKind, tempDirForTest } from "../helpers/server.js";
import {
  describeRun,
  nbdsh,
  nbdshScript,
  py,
  requireTools,
  type NbdshOutcome,
} from "../helpers/tools.js";

const ready = requireTools("nbdsh");
const MiB = 1024 * 1024;

function expectError(outcome: NbdshOutcome | undefined, errnos?: readonly string[]): void {
  expect(outcome?.ok, JSON.stringify(outcome)).toBe(false);
  if (outcome === undefined || outcome.ok) return;
  expect(outcome.errno, outcome.message).not.toBeNull();
  if (errnos !== undefined) expect(errnos, outcome.message).toContain(outcome.errno);
}

function expectValue(
  outcome: NbdshOutcome | undefined,
  value: boolean | number | string | null,
): void {
  expect(outcome, JSON.stringify(outcome)).toEqual({ ok: true, value });
}

describe.skipIf(!ready)(`nbdsh against ${serverKind()}`, () => {
  it("answers bad requests with an error and keeps the connection usable", async () => {
    const server = await serveForTest({ memory: "8M" });
    // Strict mode off lets libnbd send what it would otherwise refuse locally.
    const res = await nbdshScript(`
h.set_strict_mode(0)
h.connect_uri(${py(server.uri)})
size = h.get_size()
h.pwrite(b"k" * 4096, 0)
attempt("read_past_end", lambda: h.pread(512, size))
attempt("read_straddling_end", lambda: h.pread(1024, size - 512))
attempt("write_past_end", lambda: h.pwrite(b"x" * 512, size - 256))
attempt("trim_past_end", lambda: h.trim(4096, size))
attempt("zero_past_end", lambda: h.zero(4096, size))
attempt("read_bad_flag", lambda: h.pread(512, 0, 1 << 10))
attempt("write_bad_flag", lambda: h.pwrite(b"x" * 512, 0, 1 << 10))
attempt("read_zero_length", lambda: h.pread(0, 0))
attempt("write_zero_length", lambda: h.pwrite(b"", 0))
attempt("still_usable", lambda: h.pread(4096, 0) == b"k" * 4096)
attempt("write_after_errors", lambda: h.pwrite(b"m" * 512, 4096, nbd.CMD_FLAG_FUA))
attempt("read_after_errors", lambda: h.pread(512, 4096) == b"m" * 512)
h.shutdown()
`);
    // Error numbers as the spec asks (section "Error values"); mature servers
    // differ on some, so those accept either.
    expectError(res.read_past_end, ["EINVAL"]);
    expectError(res.read_straddling_end, ["EINVAL"]);
    expectError(res.write_past_end, ["ENOSPC", "EINVAL"]);
    expectError(res.trim_past_end, ["EINVAL", "ENOSPC"]);
    expectError(res.zero_past_end, ["ENOSPC", "EINVAL"]);
    expectError(res.read_bad_flag, ["EINVAL"]);
    expectError(res.write_bad_flag, ["EINVAL"]);
    // Zero-length requests are unspecified; the server must answer, not hang up.
    expectError(res.read_zero_length);
    expectError(res.write_zero_length);
    // The write with the bad flag must not have reached the data.
    expectValue(res.still_usable, true);
    expectValue(res.write_after_errors, null);
    expectValue(res.read_after_errors, true);
  });

  it("serves a client that refuses structured replies", async () => {
    const server = await serveForTest({ memory: "8M" });
    const res = await nbdshScript(`
h.set_request_structured_replies(False)
h.connect_uri(${py(server.uri)})
attempt("structured", lambda: h.get_structured_replies_negotiated())
attempt("write", lambda: h.pwrite(bytes(range(256)) * 4096, 1048576))
attempt("read", lambda: h.pread(1048576, 1048576) == bytes(range(256)) * 4096)
attempt("read_unwritten", lambda: h.pread(65536, 0) == bytes(65536))
h.set_strict_mode(0)
attempt("read_past_end", lambda: h.pread(512, h.get_size()))
attempt("after", lambda: h.pread(512, 1048576) == bytes(range(256)) * 2)
h.shutdown()
`);
    expectValue(res.structured, false);
    expectValue(res.read, true);
    expectValue(res.read_unwritten, true);
    expectError(res.read_past_end, ["EINVAL"]);
    expectValue(res.after, true);
  });

  it("serves an old-style client that sends NBD_OPT_EXPORT_NAME", async () => {
    const server = await serveForTest({ memory: "8M", exportName: "legacy" });
    // No NBD_FLAG_C_FIXED_NEWSTYLE and no NBD_FLAG_C_NO_ZEROES: the server must
    // answer EXPORT_NAME with the 124 bytes of padding.
    const res = await nbdshScript(`
h.set_handshake_flags(0)
h.connect_uri(${py(server.uri)})
attempt("protocol", lambda: h.get_protocol())
attempt("size", lambda: h.get_size())
attempt("name", lambda: h.get_export_name())
h.pwrite(b"z" * 65536, 0)
attempt("read", lambda: h.pread(65536, 0) == b"z" * 65536)
h.flush()
h.shutdown()
`);
    expectValue(res.protocol, "newstyle");
    expectValue(res.size, 8 * MiB);
    expectValue(res.name, "legacy");
    expectValue(res.read, true);
  });

  it("lists, inspects and aborts in the option phase", async () => {
    const server = await serveForTest({ memory: "8M", exportName: "vol1", transport: "unix" });
    const result = await nbdsh([
      "--opt-mode",
      "-u",
      server.uri,
      "-c",
      `
import json
names = []
h.opt_list(lambda n, d: names.append(n))
contexts = []
h.opt_list_meta_context(lambda c: contexts.append(c))
h.opt_info()
info = {"names": names, "contexts": contexts, "size": h.get_size(), "ro": h.is_read_only()}
h.opt_abort()
info["closed"] = h.aio_is_closed()
print("INFO " + json.dumps(info))
`,
    ]);
    expect(result.exitCode, describeRun(result)).toBe(0);
    const line = result.stdout.split("\n").find((l) => l.startsWith("INFO "));
    expect(line, describeRun(result)).toBeDefined();
    const info = JSON.parse((line ?? "INFO {}").slice(5)) as Record<string, unknown>;
    expect(info.names).toContain("vol1");
    expect(info.contexts).toContain("base:allocation");
    expect(info.size).toBe(8 * MiB);
    expect(info.ro).toBe(false);
    expect(info.closed).toBe(true);
  });

  it("reports base:allocation extents through NBD_CMD_BLOCK_STATUS", async () => {
    const server = await serveForTest({ memory: "8M" });
    const res = await nbdshScript(`
import json
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(${py(server.uri)})
attempt("negotiated", lambda: h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION))
h.pwrite(b"d" * 1048576, 2 * 1048576)
seen = []
def extents(meta, offset, entries, err):
    seen.append((meta, offset, list(entries)))
    return 0
def run_status(flags):
    seen.clear()
    h.block_status(8 * 1048576, 0, extents, flags)
    assert len(seen) == 1 and seen[0][0] == nbd.CONTEXT_BASE_ALLOCATION, seen
    return seen[0][2]
whole = run_status(0)
# Walk the extents: flags bit 0 is NBD_STATE_HOLE, bit 1 NBD_STATE_ZERO.
pos, data = 0, []
for i in range(0, len(whole), 2):
    length, flags = whole[i], whole[i + 1]
    if not flags & 1:
        data.append([pos, pos + length])
    pos += length
merged = []
for start, end in data:
    if merged and merged[-1][1] == start:
        merged[-1][1] = end
    else:
        merged.append([start, end])
res["data"] = {"ok": True, "value": json.dumps(merged, separators=(",", ":"))}
res["covered"] = {"ok": True, "value": pos >= 1048576 and pos <= 8 * 1048576}
one = run_status(nbd.CMD_FLAG_REQ_ONE)
res["req_one"] = {"ok": True, "value": len(one) == 2 and one[1] & 3 == 3}
h.shutdown()
`);
    expectValue(res.negotiated, true);
    expectValue(res.data, JSON.stringify([[2 * MiB, 3 * MiB]]));
    expectValue(res.covered, true);
    expectValue(res.req_one, true);
  });

  it("refuses writes on a read-only export with EPERM and keeps the connection", async () => {
    const dir = await tempDirForTest();
    const image = join(dir, "disk.img");
    await createSparseFile(image, 8 * MiB);
    const server = await serveForTest({ image, readOnly: true });
    const res = await nbdshScript(`
h.set_strict_mode(0)
h.connect_uri(${py(server.uri)})
attempt("read_only", lambda: h.is_read_only())
attempt("write", lambda: h.pwrite(b"x" * 512, 0))
attempt("write_fua", lambda: h.pwrite(b"x" * 512, 4096, nbd.CMD_FLAG_FUA))
attempt("trim", lambda: h.trim(4096, 0))
attempt("zero", lambda: h.zero(4096, 0))
attempt("read", lambda: h.pread(8192, 0) == bytes(8192))
attempt("flush", lambda: h.flush())
h.shutdown()
`);
    expectValue(res.read_only, true);
    expectError(res.write, ["EPERM"]);
    expectError(res.write_fua, ["EPERM"]);
    expectError(res.trim, ["EPERM"]);
    expectError(res.zero, ["EPERM"]);
    expectValue(res.read, true);
    expect(res.flush?.ok, JSON.stringify(res.flush)).toBe(true);
  });
});
