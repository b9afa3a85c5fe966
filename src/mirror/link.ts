// The link ("second processor"): turns dispatched subtasks into NBD commands
// to the secondary, in dispatch order. With peercopy's own secondary, which
// applies the stream in arrival order, it keeps a window of requests in flight.
// With any other NBD server, requests in flight may execute in any order, so a
// request is held back until every write it depends on has been acknowledged
// (its barrier), and two requests for one track are never in flight together.
import { NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE } from "../../nbd/constants.js";
import { NbdClient, connectUri } from "../../nbd/client/index.js";
import type { Logger } from "../../nbd/logger.js";
import type { Subtask } from "../sequencer/plan.js";
import { CONTROL_PAGE_SIZE, decodeRecord } from "../pair/control.js";
import { OUT_OF_SYNC_CONTEXT } from "../pair/handshake.js";

/** The export description by which a peercopy secondary says it applies writes in order. */
export const ORDERED_STREAM_DESCRIPTION = "peercopy replication stream (applied in arrival order)";

export const LinkEntryKind = { SUBTASK: 0, FLUSH: 1 } as const;

export interface LinkEntry {
  readonly kind: (typeof LinkEntryKind)[keyof typeof LinkEntryKind];
  readonly subtask: Subtask | undefined;
  /** Host acknowledgements this entry depends on (see MirrorFilter's watermark). */
  readonly barrier: number;
  /** Owner's context, handed back in callbacks. */
  readonly owner: unknown;
}

export interface LinkEvents {
  acked(entry: LinkEntry): void;
  /** The link went down; `abandoned` never reached (or never were confirmed by) the secondary. */
  lost(error: Error, abandoned: LinkEntry[]): void;
  connected(): void;
  /**
   * Before the link counts as up: the pair decides whether mirroring may start on
   * this connection (`controlPage`: the remote is a peercopy secondary with a
   * pair record). "refuse" closes it and stops reconnecting until retry().
   */
  accept(client: NbdClient, controlPage: boolean): Promise<"mirror" | "refuse">;
  /** The remote can never take the stream as configured; reconnecting stops. */
  misconfigured(error: LinkConfigError): void;
  /** True once every write acknowledged to hosts up to `barrier` is on the secondary. */
  barrierReached(barrier: number): boolean;
}

export interface LinkOptions {
  remote: string;
  /** Volume size the secondary must at least have. */
  size: number;
  logger: Logger;
  events: LinkEvents;
  /** "auto" trusts the secondary's export description. */
  ordered?: "auto" | "yes" | "no";
  maxInFlight?: number;
  maxInFlightBytes?: number;
  /** Makes each connection (default connectUri); the link emulator puts itself in here. */
  connect?: LinkConnect;
}

/** How the link makes a connection to the remote (connectUri's signature, with what the link passes). */
export type LinkConnect = (
  remote: string,
  options: { readonly timeoutMs: number; readonly metaContexts: readonly string[] },
) => Promise<NbdClient>;

export const LinkState = {
  DOWN: "down",
  CONNECTING: "connecting",
  UP: "up",
  /** Connected, and the pair refused to mirror over it (split brain, unrelated volumes). */
  REFUSED: "refused",
  /** The remote cannot take the stream as configured (read-only, too small). */
  MISCONFIGURED: "misconfigured",
  STOPPED: "stopped",
} as const;

/** The remote as configured can never take the replication stream: retrying will not help. */
export class LinkConfigError extends Error {
  constructor(
    readonly code: "EROFS" | "ESIZE",
    message: string,
  ) {
    super(message);
    this.name = "LinkConfigError";
  }
}
export type LinkState = (typeof LinkState)[keyof typeof LinkState];

const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 5000;
/** An idle link to a peercopy secondary reads its pair record this often, so the
 * secondary knows a primary is there and the primary learns of a promotion. */
const HEARTBEAT_MS = 1000;

export class Link {
  state: LinkState = LinkState.DOWN;
  ordered = false;
  /** The remote is a peercopy secondary, whose export ends with its control page. */
  controlPage = false;
  reconnects = 0;
  errors = 0;
  lastError: string | undefined;
  sentRequests = 0;
  sentBytes = 0;
  private client: NbdClient | null = null;
  private readonly queue: LinkEntry[] = [];
  private head = 0;
  private readonly inFlight = new Set<LinkEntry>();
  private inFlightBytes = 0;
  private readonly busyTracks = new Map<number, number>();
  private readonly maxInFlight: number;
  private readonly maxInFlightBytes: number;
  private retryTimer: NodeJS.Timeout | undefined;
  private attempt = 0;
  private idleWaiters: (() => void)[] = [];
  private heartbeat: NodeJS.Timeout | undefined;
  private heartbeatPage: Buffer | undefined;

  constructor(private readonly options: LinkOptions) {
    this.maxInFlight = options.maxInFlight ?? 64;
    this.maxInFlightBytes = options.maxInFlightBytes ?? 64 * 1024 * 1024;
  }

  get queued(): number {
    return this.queue.length - this.head;
  }

  get requestsInFlight(): number {
    return this.inFlight.size;
  }

  get remoteUri(): string {
    return this.options.remote;
  }

  /** The connection while the link is up (for control-page reads and verify). */
  get connection(): NbdClient | null {
    return this.state === LinkState.UP ? this.client : null;
  }

  /** Try again now after a refusal, e.g. once the operator resolved a split brain. */
  retry(): void {
    if (this.state !== LinkState.REFUSED && this.state !== LinkState.DOWN) return;
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    void this.connectOnce();
  }

  /** Connect now; on failure keep retrying with backoff. Resolves after the first attempt. */
  async start(): Promise<void> {
    await this.connectOnce();
  }

  enqueue(entry: LinkEntry): void {
    this.queue.push(entry);
    this.pump();
  }

  /** Resolves when nothing is queued or in flight (or the link is down). */
  idle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Take back everything queued but not yet sent (mirroring suspended). */
  dropQueued(): LinkEntry[] {
    const out = this.queue.slice(this.head);
    this.queue.length = 0;
    this.head = 0;
    if (this.isIdle()) this.wakeIdle();
    return out;
  }

  /** Stop for good: no reconnection; pending entries are abandoned. */
  async stop(): Promise<void> {
    this.state = LinkState.STOPPED;
    clearTimeout(this.retryTimer);
    clearInterval(this.heartbeat);
    const client = this.client;
    this.client = null;
    if (client !== null) await client.close().catch(() => undefined);
    this.wakeIdle();
  }

  /** No more idle reads of the pair record on this connection (it is about to be released). */
  stopHeartbeat(): void {
    clearInterval(this.heartbeat);
  }

  /** Drop the connection as a link failure would (operator action, tests, fault injection). */
  cut(reason = "link cut by operator"): void {
    this.fail(Object.assign(new Error(reason), { code: "ELINKCUT" }));
  }

  private isIdle(): boolean {
    return this.state !== LinkState.UP || (this.queued === 0 && this.inFlight.size === 0);
  }

  private async connectOnce(): Promise<void> {
    if (this.state === LinkState.STOPPED) return;
    this.state = LinkState.CONNECTING;
    const { logger, remote } = this.options;
    try {
      // A peercopy secondary publishes its own marks; other servers ignore the request.
      const client = await (this.options.connect ?? connectUri)(remote, {
        timeoutMs: 5000,
        metaContexts: [OUT_OF_SYNC_CONTEXT],
      });
      if (this.state !== LinkState.CONNECTING) {
        client.destroy();
        return;
      }
      const mode = this.options.ordered ?? "auto";
      const description = client.negotiated.description;
      const ordered =
        mode === "yes" || (mode === "auto" && description === ORDERED_STREAM_DESCRIPTION);
      // A peercopy secondary's replication export ends with its control page.
      const controlPage = description === ORDERED_STREAM_DESCRIPTION;
      const usable = controlPage ? client.size - CONTROL_PAGE_SIZE : client.size;
      const problem = this.misfit(client, usable, description);
      if (problem !== undefined) {
        client.destroy();
        this.state = LinkState.MISCONFIGURED;
        this.errors++;
        this.lastError = problem.message;
        logger.error(
          { remote, err: problem.message },
          "configuration error: the remote cannot take the replication stream",
        );
        this.options.events.misconfigured(problem);
        return;
      }
      this.ordered = ordered;
      this.controlPage = controlPage;
      if ((await this.options.events.accept(client, controlPage)) === "refuse") {
        client.destroy();
        if (this.state === LinkState.CONNECTING) this.state = LinkState.REFUSED;
        return;
      }
      if (this.state !== LinkState.CONNECTING) {
        client.destroy();
        return;
      }
      this.client = client;
      client.on("close", (reason) => {
        if (this.client === client && this.state === LinkState.UP)
          this.fail(reason ?? new Error("the secondary closed the connection"));
      });
      this.state = LinkState.UP;
      this.attempt = 0;
      if (controlPage) this.startHeartbeat(client);
      logger.info({ remote, ordered: this.ordered, size: client.size }, "link up");
      this.options.events.connected();
      this.pump();
    } catch (err) {
      this.errors++;
      const message = (err as Error).message;
      // Retrying goes on (the secondary may be reconfigured), but say once what is wrong.
      if (refusedCredentials(err) && message !== this.lastError)
        logger.error(
          { remote, err: message },
          "the secondary refused this primary's credentials: check --remote's TLS parameters and the secondary's --replication-peer",
        );
      this.lastError = message;
      this.state = LinkState.DOWN;
      this.scheduleRetry(err as Error);
    }
  }

  /**
   * While the link is idle, read the secondary's pair record once a second: the
   * secondary then knows a primary is connected (promotion without --force
   * refuses), and a secondary promoted behind this side's back ends the link,
   * whose next connection finds the promotion and refuses to mirror.
   */
  private startHeartbeat(client: NbdClient): void {
    clearInterval(this.heartbeat);
    let sent = this.sentRequests;
    let busy = false;
    this.heartbeat = setInterval(() => {
      if (this.client !== client || this.state !== LinkState.UP) {
        clearInterval(this.heartbeat);
        return;
      }
      const idle = this.sentRequests === sent && this.inFlight.size === 0;
      sent = this.sentRequests;
      if (!idle || busy) return;
      busy = true;
      const page = (this.heartbeatPage ??= Buffer.alloc(CONTROL_PAGE_SIZE));
      client
        .read(page, client.size - CONTROL_PAGE_SIZE)
        .then(() => {
          if (this.client === client && decodeRecord(page).role === "primary")
            this.fail(new Error("the secondary was promoted: it takes host writes now"));
        })
        .catch((err: unknown) => {
          // A failed read on a live connection is the link failing.
          if (this.client === client) this.fail(err as Error);
        })
        .finally(() => (busy = false));
    }, HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  /** Why this remote can never take the stream, if it cannot. */
  private misfit(
    client: NbdClient,
    usable: number,
    description: string | undefined,
  ): LinkConfigError | undefined {
    const { remote, size } = this.options;
    if (client.capabilities.readOnly) {
      const hint = description?.includes("(secondary, read-only)")
        ? `; that is a peercopy secondary's host export: use its replication export, e.g. ${replicationHint(remote)}`
        : "; give --remote an export that accepts writes";
      return new LinkConfigError("EROFS", `the remote export ${remote} is read-only${hint}`);
    }
    if (usable < size)
      return new LinkConfigError(
        "ESIZE",
        `the remote ${remote} has ${usable} bytes, less than this volume's ${size}; give the secondary a volume of at least ${size} bytes`,
      );
    return undefined;
  }

  private scheduleRetry(err: Error): void {
    if (this.state !== LinkState.DOWN) return;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    this.attempt++;
    this.options.logger.warn(
      { remote: this.options.remote, attempt: this.attempt, retryInMs: delay, err: err.message },
      "link down; reconnecting",
    );
    this.retryTimer = setTimeout(() => {
      this.reconnects++;
      void this.connectOnce();
    }, delay);
    this.retryTimer.unref();
  }

  private pump(): void {
    const client = this.client;
    if (client === null || this.state !== LinkState.UP) return;
    while (this.head < this.queue.length) {
      if (this.inFlight.size >= this.maxInFlight || this.inFlightBytes >= this.maxInFlightBytes)
        break;
      const entry = this.queue[this.head] as LinkEntry;
      if (!this.ordered && !this.mayOverlap(entry)) break;
      this.queue[this.head++] = undefined as unknown as LinkEntry;
      this.send(client, entry);
    }
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
  }

  /** Rules for a secondary that may run requests in flight in any order. */
  private mayOverlap(entry: LinkEntry): boolean {
    if (entry.kind === LinkEntryKind.FLUSH) return this.inFlight.size === 0;
    if (!this.options.events.barrierReached(entry.barrier)) return false;
    const seq = (entry.subtask as Subtask).seq;
    return !this.busyTracks.has(seq);
  }

  private send(client: NbdClient, entry: LinkEntry): void {
    this.inFlight.add(entry);
    const sub = entry.subtask;
    let op: Promise<void>;
    if (sub === undefined) {
      op = client.flush();
    } else {
      this.busyTracks.set(sub.seq, (this.busyTracks.get(sub.seq) ?? 0) + 1);
      const fua = sub.flags & NBD_CMD_FLAG_FUA;
      if (sub.data !== undefined) {
        this.inFlightBytes += sub.length;
        op = client.write(sub.data, sub.offset, fua);
      } else if (sub.kind === "zero") {
        op = client.zero(sub.offset, sub.length, fua | (sub.flags & NBD_CMD_FLAG_NO_HOLE));
      } else {
        op = client.capabilities.trim
          ? client.trim(sub.offset, sub.length, fua)
          : Promise.resolve();
      }
      this.sentBytes += sub.length;
    }
    this.sentRequests++;
    op.then(
      () => this.settle(entry, undefined),
      (err: unknown) => this.settle(entry, err as Error),
    );
  }

  private settle(entry: LinkEntry, err: Error | undefined): void {
    if (!this.inFlight.delete(entry)) return; // abandoned when the link failed
    const sub = entry.subtask;
    if (sub !== undefined) {
      const n = (this.busyTracks.get(sub.seq) ?? 1) - 1;
      if (n === 0) this.busyTracks.delete(sub.seq);
      else this.busyTracks.set(sub.seq, n);
      if (sub.data !== undefined) this.inFlightBytes -= sub.length;
    }
    if (err !== undefined) {
      // Mirroring cannot go on past a write the secondary refused: treat as link failure.
      this.inFlight.add(entry);
      this.fail(err);
      return;
    }
    this.options.events.acked(entry);
    this.pump();
    if (this.isIdle()) this.wakeIdle();
  }

  private fail(err: Error): void {
    if (this.state !== LinkState.UP) return;
    this.errors++;
    this.lastError = err.message;
    const abandoned = [...this.inFlight, ...this.queue.slice(this.head)];
    this.inFlight.clear();
    this.busyTracks.clear();
    this.inFlightBytes = 0;
    this.queue.length = 0;
    this.head = 0;
    const client = this.client;
    this.client = null;
    this.state = LinkState.DOWN;
    client?.destroy(err);
    this.options.logger.error(
      { remote: this.options.remote, err: err.message, abandoned: abandoned.length },
      "link lost",
    );
    this.options.events.lost(err, abandoned);
    this.wakeIdle();
    this.scheduleRetry(err);
  }

  private wakeIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}

function replicationHint(remote: string): string {
  try {
    const url = new URL(remote);
    url.pathname = "/replication";
    return url.toString();
  } catch {
    return "nbd://HOST:PORT/replication";
  }
}

/** A refusal a retry cannot cure: TLS handshake failed, TLS required, or the export's policy. */
function refusedCredentials(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return (
    code === "ETLSHANDSHAKE" || code === "NBD_REP_ERR_POLICY" || code === "NBD_REP_ERR_TLS_REQD"
  );
}
