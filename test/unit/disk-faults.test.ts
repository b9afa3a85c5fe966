// The disk fault filter over a memory volume: what fails, what is written, and
// the settings' parser (one for the --disk-* options, POST /disk/set and the CLI).
import { describe, expect, it } from "vitest";
import { MemoryBackend } from "../../src/backend/memory.js";
import {
  DISK_KEYS,
  DiskFaultFilter,
  parseDiskChange,
  type DiskKey,
} from "../../src/faults/disk.js";
import { toNbdErrno } from "../../nbd/errors.js";
import { NBD_EIO } from "../../nbd/constants.js";

const KiB = 1024;
const name = (key: DiskKey): string => `--disk-${DISK_KEYS[key]}`;

describe("disk fault filter", () => {
  it("a write to the error range fails with EIO and writes nothing; others pass", async () => {
    const volume = new MemoryBackend(1024 * KiB);
    const disk = new DiskFaultFilter(volume);
    disk.apply(parseDiskChange({ writeErrorRange: "64K:4K" }, name));
    const err = await disk.write(Buffer.alloc(8 * KiB, 0x42), 60 * KiB, 0).catch((e: unknown) => e);
    expect(toNbdErrno(err)).toBe(NBD_EIO);
    expect((err as { code?: string }).code).toBe("EIO");
    const back = Buffer.alloc(8 * KiB, 1);
    await disk.read(back, 60 * KiB);
    expect(back.every((b) => b === 0)).toBe(true);
    await disk.write(Buffer.alloc(4 * KiB, 0x43), 68 * KiB, 0);
    await expect(disk.zero(64 * KiB, 1, 0)).rejects.toThrow(/disk fault filter/);
    await expect(disk.trim(0, 4 * KiB, 0)).resolves.toBeUndefined();
    expect(disk.status()).toMatchObject({
      injectedWriteErrors: 2,
      injectedReadErrors: 0,
      writeErrorRangeOffset: 64 * KiB,
      writeErrorRangeLength: 4 * KiB,
    });
  });

  it("read errors by range and by fraction; a reset clears everything", async () => {
    const volume = new MemoryBackend(256 * KiB);
    let dice = 0.5;
    const disk = new DiskFaultFilter(volume, () => dice);
    disk.apply(parseDiskChange({ readErrorRange: "0:4K", readErrorRate: "10%" }, name));
    await expect(disk.read(Buffer.alloc(512), 4095)).rejects.toThrow(/EIO/);
    await expect(disk.read(Buffer.alloc(512), 8 * KiB)).resolves.toBeUndefined();
    dice = 0.05;
    await expect(disk.read(Buffer.alloc(512), 8 * KiB)).rejects.toThrow(/EIO/);
    disk.apply(parseDiskChange({ reset: true }, name));
    await expect(disk.read(Buffer.alloc(512), 0)).resolves.toBeUndefined();
    expect(disk.status()).toMatchObject({ injectedReadErrors: 2, readErrorRate: 0 });
  });

  it("slow writes take the delay; writev keeps going through as one call", async () => {
    const volume = new MemoryBackend(256 * KiB);
    const calls: number[] = [];
    Object.assign(volume, {
      writev: (parts: readonly Buffer[], offset: number) => {
        calls.push(parts.length);
        return volume.write(Buffer.concat(parts), offset, 0);
      },
    });
    const disk = new DiskFaultFilter(volume);
    disk.apply(parseDiskChange({ writeDelay: "30ms" }, name));
    const t = performance.now();
    await disk.writev?.([Buffer.alloc(512, 1), Buffer.alloc(512, 2)], 0, 0);
    expect(performance.now() - t).toBeGreaterThanOrEqual(29);
    expect(calls).toEqual([2]);
    expect(disk.status().delayedWrites).toBe(1);
  });

  it("bad settings name the option", () => {
    expect(() => parseDiskChange({ writeErrorRate: "2" }, name)).toThrow(
      '--disk-write-error-rate: "2" is not a fraction from 0 to 1',
    );
    expect(() => parseDiskChange({ readErrorRange: "1M" }, name)).toThrow(
      '--disk-read-error-range: "1M" is not OFFSET:LENGTH',
    );
    expect(() => parseDiskChange({ writeDelay: "soon" }, name)).toThrow("--disk-write-delay");
    expect(() => parseDiskChange({ latency: "5ms" }, name)).toThrow(
      'unknown disk setting "latency"',
    );
  });
});
