// `peercopy attach` and `peercopy detach` on the kernel NBD client path, which
// this host (no nbd module) cannot take: the CLI runs inside a Debian kernel
// under qemu (TCG), with this machine's node and the built dist/ in the
// guest's initramfs (scripts/vm-experiment --attach). attach must pick the
// kernel client and print /dev/nbd0; ext4 and files go onto it; detach refuses
// while it is mounted, then disconnects it. The host reads the exported image
// back: e2fsck -fn clean and every file, through debugfs, as the guest wrote it.
import { describe, expect, it } from "vitest";
import { attachProblems, describeAttach, runAttachExperiment } from "../../scripts/vm/attach.js";
import { GUEST_TOOLS } from "../../scripts/vm/guest.js";
import { requireTools } from "../helpers/tools.js";

const ready = requireTools(...GUEST_TOOLS, "debugfs");

const PER = 8;
// About 30 s with the guest cached; the first run downloads the kernel package too.
const TIMEOUT_MS = 240_000;

describe.skipIf(!ready)("peercopy attach/detach through the kernel NBD client, in a guest", () => {
  it(
    "attaches /dev/nbd0, carries ext4, refuses to detach while mounted, detaches",
    async () => {
      const log: string[] = [];
      const result = await runAttachExperiment({
        per: PER,
        timeoutMs: TIMEOUT_MS - 20_000,
        log: (line) => log.push(line),
      });
      const why = `${log.join("\n")}\n${describeAttach(result, PER)}`;
      console.log(describeAttach(result, PER));
      const { steps, states } = result;
      expect(result.failure, why).toBeUndefined();
      // The kernel path, chosen by attach itself (no --method).
      expect(steps.attach?.exit, why).toBe(0);
      expect(steps.attach?.stdout, why).toEqual(["/dev/nbd0"]);
      expect(steps.list?.stdout, why).toEqual(["/dev/nbd0 kernel nbd://10.0.2.100:10809/"]);
      expect(states.attached, why).toEqual({
        device: "/dev/nbd0",
        connected: true,
        sectors: result.exportSectors,
      });
      // A connected device is refused by name, and stays connected.
      expect(steps.again?.exit, why).toBe(1);
      expect(steps.again?.stderr.join("\n"), why).toContain(
        "/dev/nbd0 is already connected (peercopy attach nbd://10.0.2.100:10809/)",
      );
      expect(states.again?.connected, why).toBe(true);
      // nbd-client's refusal comes through in its own words, on the next free device.
      expect(steps.missing?.exit, why).toBe(1);
      expect(steps.missing?.stderr, why).toEqual([
        'peercopy attach: nbd-client could not attach /dev/nbd1: Unknown error returned by server. Server said: no export named "missing"',
      ]);
      expect(states.missing, why).toEqual({ device: "/dev/nbd1", connected: false, sectors: 0 });
      // Mounted: detach refuses and leaves the device alone.
      expect(steps.busy?.exit, why).toBe(1);
      expect(steps.busy?.stderr, why).toEqual([
        "peercopy detach: /dev/nbd0 is in use (mounted on /mnt); umount it first",
      ]);
      expect(states.busy?.connected, why).toBe(true);
      expect(steps.detach?.exit, why).toBe(0);
      expect(states.detached, why).toEqual({ device: "/dev/nbd0", connected: false, sectors: 0 });
      expect(steps.after?.stdout, why).toEqual([]);
      // The data, read on the host from the image the server exported.
      expect(result.fsckExit, `${why}\n${result.fsckLog}`).toBe(0);
      expect(result.files.map((f) => f.name).sort(), why).toEqual(
        ["big", ...Array.from({ length: PER }, (_, i) => `f${i}`)].sort(),
      );
      for (const f of result.files) expect(f.host, `${why}\n${f.name}`).toBe(f.guest);
      expect(attachProblems(result, PER), why).toEqual([]);
      expect(result.ok, why).toBe(true);
    },
    TIMEOUT_MS,
  );
});
