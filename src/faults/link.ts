// The link emulator: distance and faults on the primary's link to the
// secondary, for experiments. It makes the link's connections itself (the
// link's connect hook) and puts an EmulatedStream between the NBD client and
// the real socket, so the mirror sees only real events: late bytes, a closed
// socket, an NBD error reply.
import { NbdClient } from "../../nbd/client/index.js";
import { clientTlsFromUri } from "../../nbd/client/client.js";
import type { Logger } from "../../nbd/logger.js";
import { connect } from "../../nbd/transport.js";
import { parseNbdUri } from "../../nbd/uri.js";
import { UsageError } from "../cli/args.js";
import type { LinkConnect } from "../mirror/link.js";
import { EmulatedStream } from "./stream.js";
import {
  describeLinkFaults,
  NO_LINK_FAULTS,
  type LinkChange,
  type LinkFaults,
  type LinkShape,
} from "./settings.js";

export class LinkEmulator {
  readonly faults: LinkFaults = { ...NO_LINK_FAULTS };
  stalls = 0;
  disconnects = 0;
  injectedErrors = 0;
  private readonly shape: LinkShape = { latencyMs: 0, jitterMs: 0, bandwidth: 0, frozenUntil: 0 };
  private readonly streams = new Set<EmulatedStream>();
  private stallTimer: NodeJS.Timeout | undefined;
  private disconnectTimer: NodeJS.Timeout | undefined;
  private disconnectOnce: NodeJS.Timeout | undefined;

  /** The remote is nbds://: the emulator sees only ciphertext. */
  private readonly encrypted: boolean;

  constructor(
    remote: string,
    private readonly logger: Logger,
    private readonly now: () => number = performance.now.bind(performance),
  ) {
    this.encrypted = parseNbdUri(remote, { allowTls: true }).tls;
  }

  /**
   * The link's connect hook: a real connection with the emulator in its byte
   * stream. Over TLS the stream carries ciphertext: latency, bandwidth, stalls
   * and disconnects work the same, but requests cannot be told apart, so error
   * replies are refused for an nbds:// remote (see apply()).
   */
  readonly connect: LinkConnect = async (remote, { timeoutMs, metaContexts }) => {
    const uri = parseNbdUri(remote, { allowTls: true });
    const { endpoint, exportName } = uri;
    const deadline = Date.now() + timeoutMs;
    const tls = uri.tls ? await clientTlsFromUri(uri) : undefined;
    const socket = await connect(endpoint, timeoutMs);
    const stream = new EmulatedStream(socket, {
      shape: () => this.shape,
      failWrite: (offset, length) => this.failWrite(offset, length),
      now: this.now,
    });
    this.streams.add(stream);
    stream.on("close", () => this.streams.delete(stream));
    const client = await NbdClient.handshake(stream, {
      endpoint,
      exportName,
      metaContexts,
      tls,
      timeoutMs: deadline - Date.now(),
    });
    if (tls === undefined) stream.startTransmission(client.structuredReplies);
    return client;
  };

  /** Apply a change now; returns the settings in force. */
  apply(change: LinkChange): Record<string, number | null> {
    const { errorRate, errorRange } = change.faults;
    if (this.encrypted && ((errorRate ?? 0) > 0 || (errorRange ?? null) !== null))
      throw new UsageError(
        "link error replies need a plaintext link: over nbds:// the emulator sees only ciphertext and cannot find the writes (latency, bandwidth, stalls and disconnects work)",
      );
    Object.assign(this.faults, change.faults);
    const f = this.faults;
    this.shape.latencyMs = f.latencyMs;
    this.shape.jitterMs = f.jitterMs;
    this.shape.bandwidth = f.bandwidth;
    if (change.faults.stallEveryMs !== undefined || change.faults.stallMs !== undefined) {
      clearInterval(this.stallTimer);
      this.stallTimer = undefined;
      if (f.stallEveryMs > 0) {
        this.stallTimer = setInterval(() => this.stall(f.stallMs), f.stallEveryMs);
        this.stallTimer.unref();
      }
    }
    if (change.faults.disconnectEveryMs !== undefined) {
      clearInterval(this.disconnectTimer);
      this.disconnectTimer = undefined;
      const every = f.disconnectEveryMs;
      if (every > 0) {
        const why = `connection reset (link emulation: a disconnect every ${every} ms)`;
        this.disconnectTimer = setInterval(() => this.disconnect(why), every);
        this.disconnectTimer.unref();
      }
    }
    if (change.disconnectAfterMs !== undefined) {
      clearTimeout(this.disconnectOnce);
      const after = change.disconnectAfterMs;
      const why = `connection reset (link emulation: a disconnect ${after} ms after it was set)`;
      this.disconnectOnce = setTimeout(() => this.disconnect(why), after);
      this.disconnectOnce.unref();
    }
    if (change.stallNowMs !== undefined) this.stall(change.stallNowMs);
    if (change.disconnectNow === true) this.disconnect("connection reset (link emulation)");
    const settings = describeLinkFaults(f);
    this.logger.info(settings, "link emulation");
    return settings;
  }

  /** For GET /status: the settings and what they have done so far. */
  status(): Record<string, number | null> {
    return {
      ...describeLinkFaults(this.faults),
      stalls: this.stalls,
      disconnects: this.disconnects,
      injectedErrors: this.injectedErrors,
    };
  }

  close(): void {
    clearInterval(this.stallTimer);
    clearInterval(this.disconnectTimer);
    clearTimeout(this.disconnectOnce);
  }

  private stall(ms: number): void {
    if (ms <= 0) return;
    this.stalls++;
    this.shape.frozenUntil = Math.max(this.shape.frozenUntil, this.now() + ms);
    this.logger.info({ ms }, "link emulation: link frozen");
    for (const s of this.streams) s.frozen();
  }

  private disconnect(reason: string): void {
    if (this.streams.size === 0) return;
    this.disconnects++;
    for (const s of this.streams) s.disconnect(reason);
  }

  private failWrite(offset: number, length: number): boolean {
    const f = this.faults;
    const r = f.errorRange;
    const fail =
      (r !== null && offset < r.offset + r.length && r.offset < offset + length) ||
      (f.errorRate > 0 && Math.random() < f.errorRate);
    if (fail) this.injectedErrors++;
    return fail;
  }
}
