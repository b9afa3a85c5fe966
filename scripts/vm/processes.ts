// The experiment's processes: peercopy controllers (pino JSON on stderr) and
// qemu guests (lines starting with "PCVM " on the serial console), each
// watchable line by line with a deadline.
import { spawn, type ChildProcess } from "node:child_process";
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";

export const PEERCOPY_MAIN = resolve(import.meta.dirname, "../../dist/src/cli/main.js");

type Line = Record<string, unknown>;

/** Lines from a stream, kept and watchable. */
class Lines<T> {
  readonly items: T[] = [];
  private partial = "";
  private readonly waiters = new Set<() => void>();

  constructor(private readonly parse: (line: string) => T | undefined) {}

  feed(chunk: Buffer): void {
    this.partial += chunk.toString("utf8");
    let nl: number;
    while ((nl = this.partial.indexOf("\n")) >= 0) {
      const item = this.parse(this.partial.slice(0, nl).replace(/\r$/, ""));
      this.partial = this.partial.slice(nl + 1);
      if (item !== undefined) this.items.push(item);
    }
    for (const w of this.waiters) w();
  }

  wake(): void {
    for (const w of this.waiters) w();
  }

  /** The first item (past or future) that matches; rejects on timeout or when gone() holds. */
  async waitFor(
    match: (item: T) => boolean,
    what: string,
    timeoutMs: number,
    gone: () => string | undefined,
  ): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.items.find(match);
      if (found !== undefined) return found;
      const why =
        gone() ?? (Date.now() > deadline ? `no ${what} after ${timeoutMs} ms` : undefined);
      if (why !== undefined) throw new Error(why);
      await new Promise<void>((r) => {
        const done = (): void => {
          this.waiters.delete(done);
          clearTimeout(timer);
          r();
        };
        const timer = setTimeout(done, 250);
        this.waiters.add(done);
      });
    }
  }
}

abstract class Proc {
  protected readonly child: ChildProcess;
  protected text = "";
  exit: { code: number | null; signal: string | null } | undefined;
  private readonly exited: Promise<void>;

  constructor(
    readonly name: string,
    file: string,
    args: readonly string[],
  ) {
    this.child = spawn(file, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.exited = new Promise((r) => {
      this.child.on("exit", (code, signal) => {
        this.exit = { code, signal };
        this.onExit();
        r();
      });
      this.child.on("error", (err) => {
        this.text += `\n${err.message}`;
        this.exit = { code: -1, signal: null };
        this.onExit();
        r();
      });
    });
  }

  protected abstract onExit(): void;

  protected keep(chunk: Buffer): void {
    this.text = (this.text + chunk.toString("utf8")).slice(-64 * 1024);
  }

  log(): string {
    return this.text;
  }

  protected goneReason(): string | undefined {
    if (this.exit === undefined) return undefined;
    const how = this.exit.signal ?? `exit ${String(this.exit.code)}`;
    return `${this.name} ended (${how}):\n${this.text.slice(-4000)}`;
  }

  /** Signal it and wait for the exit (SIGKILL after timeoutMs). */
  async stop(signal: NodeJS.Signals = "SIGTERM", timeoutMs = 15_000): Promise<void> {
    if (this.exit === undefined) this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    await this.exited;
    clearTimeout(timer);
  }
}

export class Controller extends Proc {
  private readonly records = new Lines<Line>((line) => {
    if (!line.startsWith("{")) return undefined;
    try {
      return JSON.parse(line) as Line;
    } catch {
      return undefined;
    }
  });
  uri = "";
  port = 0;
  adminUrl = "";
  /** The bearer token admin actions need: from the file the controller names in its log. */
  private adminToken: string | undefined;

  constructor(name: string, args: readonly string[]) {
    super(name, process.execPath, [PEERCOPY_MAIN, ...args]);
    this.child.stderr?.on("data", (c: Buffer) => {
      this.keep(c);
      this.records.feed(c);
    });
    this.child.stdout?.on("data", (c: Buffer) => this.keep(c));
  }

  protected onExit(): void {
    this.records.wake();
  }

  waitForLog(msg: string, timeoutMs = 30_000): Promise<Line> {
    return this.records.waitFor(
      (r) => r.msg === msg,
      `"${msg}"`,
      timeoutMs,
      () => this.goneReason(),
    );
  }

  /** Waits for "listening"; learns the host URI and port. */
  async listening(): Promise<this> {
    const listening = await this.waitForLog("listening");
    this.uri = String(listening.uri);
    this.port = Number(/:(\d+)\//.exec(this.uri)?.[1]);
    return this;
  }

  /** Waits for "listening" and "admin API"; learns the host URI and the admin URL. */
  async ready(): Promise<this> {
    await this.listening();
    const admin = await this.waitForLog("admin API");
    this.adminUrl = String(admin.status).replace(/\/status$/, "");
    if (typeof admin.tokenFile === "string")
      this.adminToken = (await readFile(admin.tokenFile, "utf8")).trim();
    return this;
  }

  async admin(method: "GET" | "POST", path: string, body?: unknown): Promise<Line> {
    const headers: Record<string, string> = {};
    if (this.adminToken !== undefined) headers.authorization = `Bearer ${this.adminToken}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(`${this.adminUrl}${path}`, {
      method,
      headers,
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const reply = (await res.json()) as Line;
    if (!res.ok) throw new Error(`${this.name}: ${method} ${path}: ${JSON.stringify(reply)}`);
    return reply;
  }

  /** Polls /status until ok() holds. */
  async waitForStatus(ok: (s: Line) => boolean, what: string, timeoutMs = 60_000): Promise<Line> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const gone = this.goneReason();
      if (gone !== undefined) throw new Error(gone);
      const status = await this.admin("GET", "/status");
      if (ok(status)) return status;
      if (Date.now() > deadline)
        throw new Error(
          `${this.name}: not ${what} after ${timeoutMs} ms: ${JSON.stringify(status)}`,
        );
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** SIGTERM, and throw unless it exits 0. */
  async stopClean(): Promise<void> {
    await this.stop("SIGTERM", 30_000);
    if (this.exit?.code !== 0)
      throw new Error(`${this.name} did not stop cleanly:\n${this.text.slice(-4000)}`);
  }
}

/** One "PCVM WORD args…" line from the guest. */
export interface GuestLine {
  readonly at: number;
  readonly word: string;
  readonly args: readonly string[];
}

export class Qemu extends Proc {
  readonly started = performance.now();
  private readonly lines = new Lines<GuestLine>((line) => {
    const i = line.indexOf("PCVM ");
    if (i < 0) return undefined;
    const [word = "", ...args] = line
      .slice(i + 5)
      .trim()
      .split(/\s+/);
    return { at: performance.now(), word, args };
  });

  constructor(name: string, args: readonly string[]) {
    super(name, "qemu-system-x86_64", args);
    for (const s of [this.child.stdout, this.child.stderr])
      s?.on("data", (c: Buffer) => {
        this.keep(c);
        this.lines.feed(c);
      });
  }

  protected onExit(): void {
    this.lines.wake();
  }

  all(): readonly GuestLine[] {
    return this.lines.items;
  }

  /** The first line with this word; a FAIL line from the guest rejects at once. */
  waitFor(word: string, timeoutMs: number, match: (l: GuestLine) => boolean = () => true) {
    return this.lines
      .waitFor(
        (l) => (l.word === word && match(l)) || l.word === "FAIL",
        word,
        timeoutMs,
        () => this.goneReason(),
      )
      .then((l) => {
        if (l.word === "FAIL") throw new Error(`${this.name}: guest failed: ${l.args.join(" ")}`);
        return l;
      });
  }
}
