/// <reference lib="dom" />
// The admin API's dashboard in a real browser (Debian's chromium, driven by
// puppeteer-core): with the link suspended, known ranges are written, and the
// page must draw exactly those tracks as marked cells of the map and show the
// numbers /status gives. Then the primary restarts on the same ports: the page
// says it is disconnected, and by itself picks the new process up. A screenshot
// is kept in test-artifacts/ (gitignored).
import { mkdir, readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Browser, Page } from "puppeteer-core";
import {
  cleanupControllers,
  controllerTempDir,
  startPrimary,
  startSecondary,
  type Primary,
  type Secondary,
} from "../helpers/controllers.js";
import { freePort } from "../helpers/peers.js";
import {
  describeRun,
  findTool,
  requirePrerequisites,
  requireTools,
  run,
} from "../helpers/tools.js";
import { MAP_CELL_PX, MAP_COLORS, MAP_COLUMNS } from "../../src/admin/dashboard-page.js";

const puppeteer = await import("puppeteer-core").catch(() => undefined);
const ready =
  requireTools("chromium", "qemu-io") &&
  (puppeteer !== undefined ||
    requirePrerequisites(["the npm package puppeteer-core (npm install)"]));
const KiB = 1024;
const TRACK = 64 * KiB;
const TRACKS = 1024; // a 64 MiB volume: one cell per track
/** Offset and length of each write, and the tracks it covers. */
const WRITES: ReadonlyArray<readonly [number, number]> = [
  [0, 4 * KiB],
  [5 * TRACK + 512, 4 * KiB],
  [127 * TRACK, TRACK],
  [128 * TRACK + 60 * KiB, 8 * KiB], // crosses into track 129
  [600 * TRACK, 3 * TRACK],
  [1023 * TRACK + 32 * KiB, 4 * KiB],
];
const MARKED = new Set([0, 5, 127, 128, 129, 600, 601, 602, 1023]);
const ARTIFACTS = resolve(import.meta.dirname, "../../test-artifacts");

interface Shown {
  pairState: string;
  why: string;
  oosTracks: string;
  oosBytes: string;
  lagWrites: string;
  legend: string;
  conn: string;
  linkEmulation: string;
  diskFaults: string;
  pixels: number[][];
}

/** What the page shows, and the colour at the centre of every map cell. */
function readPage(page: Page, cells: number): Promise<Shown> {
  return page.evaluate(
    (cells: number, cols: number, px: number) => {
      const text = (id: string): string => document.getElementById(id)?.textContent ?? "";
      const canvas = document.getElementById("map") as HTMLCanvasElement;
      const ctx = canvas.getContext("2d");
      const pixels: number[][] = [];
      for (let i = 0; i < cells; i++) {
        const x = (i % cols) * px + Math.floor(px / 2);
        const y = Math.floor(i / cols) * px + Math.floor(px / 2);
        const d = ctx?.getImageData(x, y, 1, 1).data;
        pixels.push(d === undefined ? [] : [d[0] ?? -1, d[1] ?? -1, d[2] ?? -1]);
      }
      return {
        pairState: text("pair-state"),
        why: text("state-why"),
        oosTracks: text("oos-tracks"),
        oosBytes: document.getElementById("oos-bytes")?.dataset.bytes ?? "",
        lagWrites: text("lag-writes"),
        legend: text("map-legend"),
        conn: document.getElementById("conn")?.className ?? "",
        linkEmulation: text("faults"),
        diskFaults: text("disk-faults"),
        pixels,
      };
    },
    cells,
    MAP_COLUMNS,
    MAP_CELL_PX,
  );
}

describe.skipIf(!ready)("dashboard in a real browser", () => {
  let browser: Browser | undefined;
  let secondary: Secondary | undefined;
  let primary: Primary | undefined;
  let dir = "";
  let adminPort = 0;

  beforeAll(async () => {
    if (puppeteer === undefined) throw new Error("puppeteer-core vanished");
    const executablePath = findTool("chromium");
    if (executablePath === undefined) throw new Error("chromium vanished");
    browser = await puppeteer.launch({
      executablePath,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    });
    dir = await controllerTempDir();
    secondary = await startSecondary({
      image: join(dir, "s.img"),
      size: "64M",
      keepAfterTest: true,
    });
  });
  afterAll(async () => {
    await browser?.close();
    await cleanupControllers();
  });

  function start(): Promise<Primary> {
    if (secondary === undefined) throw new Error("beforeAll failed");
    return startPrimary({
      image: join(dir, "p.img"),
      size: "64M",
      remote: secondary.replicationUri,
      admin: false,
      extraArgs: ["--admin", `127.0.0.1:${adminPort}`, "--link-latency", "1ms", "--disk-faults"],
      keepAfterTest: true,
    });
  }

  async function status(): Promise<Record<string, unknown>> {
    const res = await fetch(`http://127.0.0.1:${adminPort}/status`);
    return (await res.json()) as Record<string, unknown>;
  }

  async function waitForState(state: string): Promise<void> {
    const deadline = Date.now() + 15_000;
    while ((await status()).pairState !== state) {
      if (Date.now() > deadline) throw new Error(`no ${state}: ${JSON.stringify(await status())}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  it("draws the marked tracks and the numbers of /status, and survives a restart", async () => {
    if (browser === undefined) throw new Error("beforeAll failed");
    adminPort = await freePort();
    primary = await start();
    await waitForState("full-duplex");
    const adminApi = await primary.waitForLog((r) => r.msg === "admin API", "admin API");
    const token = (await readFile(String(adminApi.tokenFile), "utf8")).trim();
    const suspend = await fetch(`http://127.0.0.1:${adminPort}/suspend`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}` },
    });
    expect(suspend.status).toBe(200);
    const args = ["-f", "raw", "-t", "writeback", primary.uri];
    for (const [offset, length] of WRITES) args.push("-c", `write ${offset} ${length}`);
    const w = await run("qemu-io", args, { timeoutMs: 30_000 });
    expect(w.exitCode, describeRun(w)).toBe(0);
    const s = (await status()) as { outOfSync: { tracks: number; bytes: number } };
    expect(s.outOfSync.tracks).toBe(MARKED.size);

    const page = await browser.newPage();
    await page.setViewport({ width: 1400, height: 900 });
    await page.goto(`http://127.0.0.1:${adminPort}/`);
    await page.waitForFunction(
      (n: number) => document.getElementById("map-legend")?.textContent?.includes(`${n} of`),
      { timeout: 10_000 },
      MARKED.size,
    );
    const shown = await readPage(page, TRACKS);
    expect(shown).toMatchObject({
      pairState: "suspended",
      why: "operator",
      oosTracks: String(s.outOfSync.tracks),
      oosBytes: String(s.outOfSync.bytes),
      lagWrites: "0",
      conn: "live",
      linkEmulation: "latency 1 ms",
      diskFaults: "on, nothing set",
    });
    expect(shown.legend).toBe(
      `one cell = 1 track (64.0 KiB); ${MARKED.size} of ${TRACKS} tracks out of sync`,
    );
    const wrong = shown.pixels
      .map((rgb, track) => ({
        track,
        rgb,
        want: MARKED.has(track) ? MAP_COLORS.marked : MAP_COLORS.clean,
      }))
      .filter(({ rgb, want }) => rgb.join() !== want.join());
    expect(wrong).toEqual([]);
    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, "dashboard.png") });

    // The primary restarts on the same admin port: disconnected, then live again.
    await primary.stopClean();
    await page.waitForFunction(() => document.getElementById("conn")?.className === "down", {
      timeout: 10_000,
    });
    primary = await start();
    await page.waitForFunction(
      () =>
        document.getElementById("conn")?.className === "live" &&
        document.getElementById("pair-state")?.textContent === "full-duplex" &&
        document.getElementById("map-legend")?.textContent?.includes(" 0 of"),
      { timeout: 15_000 },
    );
    const after = await readPage(page, TRACKS);
    expect(after.pixels.filter((rgb) => rgb.join() !== MAP_COLORS.clean.join())).toEqual([]);
    const changes = await page.evaluate(
      () => document.getElementById("changes-body")?.textContent ?? "",
    );
    expect(changes).toContain("start → ");
    await page.close();
  });
});
