// A small QMP client (the QEMU Machine Protocol: JSON objects, one per line, over a
// unix socket) for driving qemu-storage-daemon: commands in, replies and events out.
// Only what the benchmark needs; replies are matched to commands by "id".
import { connect } from "node:net";
import { sleep } from "./proc.mjs";

export class QmpError extends Error {
  /**
   * @param {string} message
   * @param {{ code?: string, cause?: unknown }} [options]
   */
  constructor(message, options = {}) {
    super(message, { cause: options.cause });
    this.code = options.code ?? "EQMP";
  }
}

/**
 * Connect to a QMP socket (retrying while the daemon is still creating it), read the
 * greeting and leave capabilities negotiation mode.
 * @param {string} path
 * @param {number} timeoutMs
 * @returns {Promise<QmpClient>}
 */
export async function qmpConnect(path, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const client = await openClient(path, Math.max(1, deadline - Date.now()));
      await client.execute("qmp_capabilities");
      return client;
    } catch (err) {
      if (Date.now() > deadline)
        throw new QmpError(`no QMP on ${path} after ${timeoutMs} ms`, { cause: err });
      await sleep(50);
    }
  }
}

function openClient(path, timeoutMs) {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const client = new QmpClient(socket);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new QmpError("no QMP greeting", { code: "ETIMEDOUT" }));
    }, timeoutMs);
    socket.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    client.greeting.then(
      () => {
        clearTimeout(timer);
        resolve(client);
      },
      (err) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

export class QmpClient {
  /** @param {import("node:net").Socket} socket */
  constructor(socket) {
    this.socket = socket;
    this.nextId = 1;
    /** @type {Map<string, { resolve: (v: unknown) => void, reject: (e: Error) => void }>} */
    this.pending = new Map();
    /** Every event received, so a wait that starts late still sees an earlier one. */
    this.events = [];
    /** @type {Set<() => void>} */
    this.eventListeners = new Set();
    this.closed = false;
    let greet;
    this.greeting = new Promise((resolve, reject) => {
      greet = { resolve, reject };
    });
    let partial = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk) => {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) if (line.trim() !== "") this.onMessage(line, greet);
    });
    socket.on("error", () => undefined);
    socket.on("close", () => {
      this.closed = true;
      const err = new QmpError("QMP connection closed", { code: "ECONNRESET" });
      greet.reject(err);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
      for (const listener of this.eventListeners) listener();
    });
  }

  onMessage(line, greet) {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch (err) {
      this.socket.destroy(new QmpError(`not JSON: ${line.slice(0, 200)}`, { cause: err }));
      return;
    }
    if ("QMP" in msg) return greet.resolve(msg);
    if ("event" in msg) {
      this.events.push(msg);
      for (const listener of this.eventListeners) listener();
      return;
    }
    const waiter = this.pending.get(String(msg.id));
    if (waiter === undefined) return;
    this.pending.delete(String(msg.id));
    if ("error" in msg)
      waiter.reject(new QmpError(`${msg.error.class}: ${msg.error.desc}`, { code: "EQMPCMD" }));
    else waiter.resolve(msg.return);
  }

  /**
   * @param {string} command
   * @param {Record<string, unknown>} [args]
   * @returns {Promise<any>} the "return" member of the reply
   */
  execute(command, args) {
    if (this.closed) return Promise.reject(new QmpError("QMP connection closed"));
    const id = String(this.nextId++);
    const message =
      args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.socket.write(`${JSON.stringify(message)}\n`);
    });
  }

  /**
   * The first event (already received or still to come) that matches.
   * @param {(event: { event: string, data?: any }) => boolean} match
   * @param {number} timeoutMs
   */
  waitForEvent(match, timeoutMs) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.events.find(match);
        if (found !== undefined) return done(() => resolve(found));
        if (this.closed) done(() => reject(new QmpError("QMP connection closed while waiting")));
      };
      const done = (fn) => {
        clearTimeout(timer);
        this.eventListeners.delete(check);
        fn();
      };
      const timer = setTimeout(
        () => done(() => reject(new QmpError(`no matching event after ${timeoutMs} ms`))),
        timeoutMs,
      );
      this.eventListeners.add(check);
      check();
    });
  }

  close() {
    this.socket.end();
  }
}
