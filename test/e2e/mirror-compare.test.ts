// After a clean stop the secondary's image equals the primary's, byte for byte
// (`qemu-img compare`), in sync and async mode, whatever the secondary: a peercopy
// secondary (applies the stream in arrival order), nbdkit's file plugin or
// qemu-nbd (both may run requests in flight in any order).
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  cleanupControllers,
  compareImages,
  controllerTempDir,
  fio,
  startPrimary,
  startSecondary,
} from "../helpers/controllers.js";
import { startNbdkit, startQemuNbd, stopPeers } from "../helpers/peers.js";
import { createSparseFile } from "../helpers/server.js";
import { describeRun, requireTools, run } from "../helpers/tools.js";

const ready = requireTools("fio", "qemu-io", "qemu-img", "qemu-nbd", "nbdkit");
const MiB = 1024 * 1024;
const IMAGE_SIZE = 256 * MiB;

type RemoteKind = "peercopy" | "nbdkit" | "qemu-nbd";

interface Remote {
  readonly uri: string;
  readonly image: string;
  stop(): Promise<void>;
}

async function startRemote(kind: RemoteKind, dir: string): Promise<Remote> {
  const image = join(dir, "secondary.img");
  if (kind === "peercopy") {
    const s = await startSecondary({ image });
    return { uri: s.replicationUri, image, stop: () => s.stopClean() };
  }
  await createSparseFile(image, IMAGE_SIZE);
  const peer =
    kind === "nbdkit"
      ? await startNbdkit({ flags: ["--exit-with-parent"], plugin: ["file", image] })
      : // qemu-nbd ignores NBD_CMD_TRIM unless told otherwise (--discard=ignore, as the
        // spec allows); the link forwards a trim as a trim, so let it honour them.
        await startQemuNbd({ image, flags: ["--cache=writeback", "--discard=unmap"] });
  return { uri: peer.uri, image, stop: () => peer.stop() };
}

/**
 * Data, zeroes (with and without holes, aligned and not), discards and
 * overwrites: every kind of write command the link carries. A discarded range
 * reads as zeros on the primary afterwards; the link forwards it as
 * NBD_CMD_TRIM, so a secondary that honours trims reads zeros there too.
 */
const QEMU_IO_COMMANDS = [
  "write -P 0x5a 100M 4M",
  "write -z 101M 1M",
  "write -z -u 102M 192k",
  "discard 103M 1M",
  "write -P 0x33 104M 4M",
  "discard 105M 512k",
  "write -z 1000 70000",
  "write -P 0x77 130000 200000",
  "write -f -P 0x11 120M 64k",
  "flush",
];

describe.skipIf(!ready)("images identical after a clean stop", () => {
  afterAll(async () => {
    await stopPeers();
    await cleanupControllers();
  });

  for (const kind of ["peercopy", "nbdkit", "qemu-nbd"] as const) {
    for (const mode of ["sync", "async"] as const) {
      it(`${mode} mode, ${kind} secondary`, async () => {
        const dir = await controllerTempDir();
        const remote = await startRemote(kind, dir);
        const primary = await startPrimary({
          image: join(dir, "primary.img"),
          remote: remote.uri,
          mode,
        });
        await primary.waitForPairState("full-duplex");

        const load = await fio(
          primary.uri,
          ["--name=w", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=16M"],
          dir,
        );
        expect(load.result.exitCode, describeRun(load.result)).toBe(0);
        expect(load.jobs[0]?.error, describeRun(load.result)).toBe(0);
        const args = ["-f", "raw", "-t", "writeback", primary.uri];
        for (const c of QEMU_IO_COMMANDS) args.push("-c", c);
        const io = await run("qemu-io", args, { timeoutMs: 30_000 });
        expect(io.exitCode, describeRun(io)).toBe(0);

        const status = await primary.status();
        expect(status).toMatchObject({ pairState: "full-duplex", link: { errors: 0 } });
        await primary.stopClean();
        await remote.stop();
        const same = await compareImages(primary.image, remote.image);
        expect(same.stdout, describeRun(same)).toContain("Images are identical.");
      }, 90_000);
    }
  }
});
