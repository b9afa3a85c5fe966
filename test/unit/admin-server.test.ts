// The admin API's HTTP layer on a loopback port: metrics that follow the
// status (a figure that turns null leaves the output), the info gauges, and
// refusals that say what to send instead (404, 405, 400, 413).
import { afterEach, describe, expect, it } from "vitest";
import { AdminServer, type Action } from "../../src/admin/server.js";
import { Dashboard } from "../../src/admin/dashboard.js";
import { UsageError } from "../../src/cli/args.js";
import { createLogger } from "../../src/cli/log.js";

const TOKEN = "0123456789abcdef0123456789abcdef";
const AUTH = { authorization: `Bearer ${TOKEN}` };
const servers: AdminServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(
  status: () => Record<string, unknown>,
  actions: Readonly<Record<string, Action>> = {},
): Promise<string> {
  const server = new AdminServer({
    host: "127.0.0.1",
    port: 0,
    status,
    actions,
    logger: createLogger("silent"),
    token: { value: TOKEN, file: "(given)", generated: false },
    dashboard: new Dashboard({ status }),
  });
  servers.push(server);
  const { port } = await server.listen();
  return `http://127.0.0.1:${port}`;
}

async function samples(base: string): Promise<string[]> {
  const text = await (await fetch(`${base}/metrics`)).text();
  return text
    .split("\n")
    .filter((l) => l !== "" && !l.startsWith("#"))
    .sort();
}

async function post(base: string, path: string, body?: string) {
  const res = await fetch(`${base}${path}`, { method: "POST", body, headers: AUTH });
  return { status: res.status, error: ((await res.json()) as { error?: string }).error ?? "" };
}

describe("admin API metrics", () => {
  it("follow the status: a figure that turns null is dropped, the info gauges carry labels", async () => {
    let status: Record<string, unknown> = {
      role: "primary",
      mode: "async",
      pairState: "duplex-pending",
      suspendReason: null,
      resync: { running: true, etaSeconds: 7 },
    };
    const base = await serve(() => status);
    expect(await samples(base)).toEqual(
      [
        "peercopy_resync_running 1",
        "peercopy_resync_eta_seconds 7",
        'peercopy_pair_state_info{state="duplex-pending"} 1',
        'peercopy_info{role="primary",mode="async"} 1',
      ].sort(),
    );
    status = {
      role: "primary",
      mode: "async",
      pairState: "suspended",
      suspendReason: "link",
      resync: { running: false, etaSeconds: null },
    };
    expect(await samples(base)).toEqual(
      [
        "peercopy_resync_running 0",
        'peercopy_pair_state_info{state="suspended"} 1',
        'peercopy_suspend_reason_info{reason="link"} 1',
        'peercopy_info{role="primary",mode="async"} 1',
      ].sort(),
    );
  });
});

describe("admin API refusals", () => {
  const status = (): Record<string, unknown> => ({ role: "secondary", pairState: "secondary" });

  it("an unknown path lists what this controller serves; a wrong method names the right one", async () => {
    const base = await serve(status, { promote: () => ({}) });
    const unknown = await post(base, "/suspend");
    expect(unknown.status).toBe(404);
    expect(unknown.error).toBe(
      "no such endpoint: POST /suspend; this secondary serves GET / (the dashboard), GET /status, GET /metrics, POST /promote",
    );
    const get = await fetch(`${base}/promote`);
    expect(get.status).toBe(405);
    expect(((await get.json()) as { error: string }).error).toBe(
      "/promote takes POST, not GET: POST /promote",
    );
    const postStatus = await post(base, "/status");
    expect(postStatus).toEqual({ status: 405, error: "/status takes GET, not POST: GET /status" });
  });

  it("a body that is not a JSON object, or too large, is refused with what to send", async () => {
    let seen: unknown;
    const base = await serve(status, {
      promote: (body) => {
        seen = body;
        return { ok: true };
      },
    });
    const notJson = await post(base, "/promote", "force");
    expect(notJson.status).toBe(400);
    expect(notJson.error).toMatch(/^the request body is not JSON \(.+\); send a JSON object/);
    const array = await post(base, "/promote", "[true]");
    expect(array).toEqual({
      status: 400,
      error: "the request body must be a JSON object of settings, not an array",
    });
    const big = await post(base, "/promote", JSON.stringify({ pad: "x".repeat(70_000) }));
    expect(big.status).toBe(413);
    expect(big.error).toMatch(/over 64 KiB/);
    expect(seen).toBeUndefined();
    expect(await post(base, "/promote", '{"force": true}')).toEqual({ status: 200, error: "" });
    expect(seen).toEqual({ force: true });
  });

  it("a setting that does not parse is 400, a state that forbids the action 409", async () => {
    const base = await serve(status, {
      "link/set": () => {
        throw new UsageError('latency: "x" is not a duration; use e.g. 500ms or 2s');
      },
      promote: () => {
        throw new Error("a primary is connected; stop or demote it first");
      },
    });
    expect(await post(base, "/link/set", '{"latency": "x"}')).toEqual({
      status: 400,
      error: 'latency: "x" is not a duration; use e.g. 500ms or 2s',
    });
    expect(await post(base, "/promote")).toEqual({
      status: 409,
      error: "a primary is connected; stop or demote it first",
    });
  });

  it("the dashboard's parameters name their range", async () => {
    const base = await serve(status);
    const cells = await fetch(`${base}/dashboard/tracks?cells=0`);
    expect(cells.status).toBe(400);
    expect(((await cells.json()) as { error: string }).error).toBe(
      "cells must be a whole number from 1 to 65536, not 0",
    );
    const since = await fetch(`${base}/dashboard/samples?since=last`);
    expect(since.status).toBe(400);
    expect(((await since.json()) as { error: string }).error).toBe(
      "since must be the seq of the last sample you have (0 for all), not last",
    );
    const page = await fetch(`${base}/`);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<canvas id="map"');
  });
});
