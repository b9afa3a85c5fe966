// The JSON served at GET /status, and the same figures as Prometheus metrics.
import type { MirrorFilter } from "../mirror/mirror.js";
import { hex } from "../pair/generations.js";

export interface ControllerInfo {
  role: "primary" | "secondary";
  hostUri: string;
  volume: string;
  size: number;
  metadata?: string | undefined;
  hostConnections: () => number;
  /** Requests and bytes the hosts asked for (writes count zeroes and trims too). */
  hostIo?: { reads: number; writes: number; readBytes: number; writtenBytes: number };
}

export function primaryStatus(info: ControllerInfo, m: MirrorFilter): Record<string, unknown> {
  const seq = m.sequencer.stats();
  const resync = m.resyncProgress;
  const verify = m.verify;
  return {
    role: info.role,
    mode: m.mode,
    pairState: m.state,
    suspendReason: m.suspendReason ?? null,
    stateDetail: m.stateDetail ?? null,
    demoted: m.demoted,
    metadata: info.metadata ?? null,
    pair: {
      id: m.side.state.pairId,
      current: hex(m.side.state.generations.current),
      bitmap: hex(m.side.state.generations.bitmap),
      fresh: m.side.state.fresh,
      lastDecision: m.lastConnect?.decision ?? null,
      localChangedTracks: m.lastConnect?.localTracks ?? null,
      remoteChangedTracks: m.lastConnect?.remoteTracks ?? null,
      recoveredFromCrash: m.side.recovered.crashed,
      recoveredActivityLogTracks: m.side.recovered.activityLogTracks,
    },
    host: {
      uri: info.hostUri,
      connections: info.hostConnections(),
      volume: info.volume,
      size: info.size,
      reads: info.hostIo?.reads ?? null,
      writes: info.hostIo?.writes ?? null,
      readBytes: info.hostIo?.readBytes ?? null,
      writtenBytes: info.hostIo?.writtenBytes ?? null,
    },
    trackSize: m.planner.trackSize,
    outOfSync: {
      tracks: m.tracks.outOfSyncTracks,
      bytes: m.tracks.outOfSyncBytes,
      pendingTracks: m.tracks.pendingTrackCount,
    },
    lag: {
      writes: m.lag.writes,
      bytes: m.lag.bytes,
      ms: Math.round(m.lag.ms),
      maxBytes: m.lag.maxBytes ?? null,
      maxMs: m.lag.maxMs ?? null,
      policy: m.lag.policy,
    },
    /** Gathered payloads the primary holds for the link, and memory kept for reuse. */
    payloads: { held: m.payloads.inUse, pooledBytes: m.payloads.pooledBytes },
    link: {
      state: m.link.state,
      remote: m.link.remoteUri,
      ordered: m.link.ordered,
      queued: m.link.queued,
      inFlight: m.link.requestsInFlight,
      sentRequests: m.link.sentRequests,
      sentBytes: m.link.sentBytes,
      reconnects: m.link.reconnects,
      errors: m.link.errors,
      lastError: m.link.lastError ?? null,
    },
    sequencer: {
      tasksActive: seq.tasksActive,
      subtasksQueued: seq.subtasksQueued,
      subtasksQueuedMax: seq.subtasksQueuedMax,
      subtasksOutOfOrder: seq.subtasksOutOfOrder,
      subtasksDispatched: seq.subtasksDispatched,
      subtasksDropped: seq.subtasksDropped,
      tasksFailed: seq.tasksFailed,
      // Waiting time from add to dispatch, measured on a sample of the subtasks.
      waitMsSampled: seq.wait,
    },
    resync: {
      running: resync.running,
      totalTracks: resync.totalTracks,
      copiedTracks: resync.copiedTracks,
      zeroTracks: resync.zeroTracks,
      bytesPerSecond: Math.round(resync.rate),
      etaSeconds: resync.eta === undefined ? null : Math.round(resync.eta),
      rateLimit: resync.rateLimit,
      lastCopiedTracks: resync.lastCopiedTracks,
    },
    verify: {
      running: verify.running,
      method: verify.running ? verify.method : (verify.last?.method ?? null),
      totalTracks: verify.totalTracks,
      checkedTracks: verify.checkedTracks,
      differingTracks: verify.differingTracks,
      bytesPerSecond: verify.running ? Math.round(verify.rate) : 0,
      etaSeconds: verify.running && verify.eta !== undefined ? Math.round(verify.eta) : null,
      rateLimit: verify.rateLimit,
      last: verify.last,
    },
    errors: {
      hostWrites: m.hostWriteErrors,
      hostReads: m.hostReadErrors,
      resyncReads: m.resyncReadErrors,
      link: m.link.errors,
    },
  };
}
