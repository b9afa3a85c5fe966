// The property the primary's ordered link relies on, checked at the moment a
// peercopy secondary dies: it "applies the replication stream in arrival order"
// (DESIGN.md), so whatever a crash leaves on its volume must be a prefix of the
// stream, or at least never hold a write without one it depends on.
//
// The stream below is what a primary in async mode sends for this host history
// over a link to a peercopy secondary, with all three in flight at once:
//   X  one 16 MiB track (--track-size 16M), acknowledged to the host first;
//   A  4 KiB inside X, issued after X's acknowledgement, then acknowledged;
//   B  4 KiB elsewhere, issued after A's acknowledgement.
// The secondary is killed as soon as it has answered B. If B is on its volume,
// so must be A.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { connectUri } from "../../nbd/client/index.js";
import {
  SECTOR,
  checkWriteOrder,
  describeReport,
  encodeWrite,
  type IssuedWrite,
} from "../helpers/oracle.js";
import { freePort, makeTempDir, spawnPeer, stopPeers } from "../helpers/peers.js";
import { PEERCOPY_MAIN } from "../helpers/server.js";

const MiB = 1024 * 1024;
const ATTEMPTS = 10;
const RUN_TAG = 0x5ec0dd;

afterAll(stopPeers);

function write(id: number, offset: number, length: number, acksSeen: number): IssuedWrite {
  return { id, offset, length, acksSeen, ackSeq: undefined, error: undefined };
}

/**
 * Send X, A and B, kill the secondary once B is answered, and check its image.
 * `barriers`: send A only after X is answered and B after A, as the link does for
 * a secondary that may reorder; the crash then cannot separate them.
 */
async function killedMidStream(attempt: number, barriers: boolean): Promise<string | undefined> {
  const dir = await makeTempDir("peercopy-oracle-crash-");
  const image = join(dir, "secondary.img");
  const port = await freePort();
  const secondary = await spawnPeer(
    process.execPath,
    [PEERCOPY_MAIN, "secondary", image, "--size", "64M", "--listen", `127.0.0.1:${port}`],
    { kind: "tcp", host: "127.0.0.1", port },
  );
  const client = await connectUri(`nbd://127.0.0.1:${port}/replication`);
  const x = write(1, 0, 16 * MiB, 0);
  const a = write(2, 8 * MiB + attempt * SECTOR * 8, 4096, 1);
  const b = write(3, 32 * MiB, 4096, 2);
  x.ackSeq = 1;
  a.ackSeq = 2;
  const send = (w: IssuedWrite): Promise<void> => client.write(encodeWrite(RUN_TAG, w), w.offset);
  if (barriers) {
    await send(x);
    await send(a);
    await send(b);
  } else {
    const sent = [x, a, b].map(send);
    for (const p of sent) p.catch(() => undefined);
    await sent[2];
  }
  process.kill(secondary.pid, "SIGKILL");
  client.destroy();
  await secondary.stop();

  const r = checkWriteOrder({
    runTag: RUN_TAG,
    writes: [x, a, b],
    image: await readFile(image),
    trackSize: 16 * MiB,
  });
  // B was acknowledged, so it must be there: the check below is not vacuous.
  expect(r.newestPresent).toBe(3);
  return r.violations.length === 0 ? undefined : describeReport(r);
}

describe("a peercopy secondary killed mid-stream", () => {
  it("never holds a write without the one before it in the stream", async () => {
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      const failure = await killedMidStream(attempt, false);
      expect(failure, `attempt ${attempt + 1} of ${ATTEMPTS}`).toBeUndefined();
    }
  });

  it("control: with each write answered before the next is sent, the crash leaves a prefix", async () => {
    for (let attempt = 0; attempt < 3; attempt++) {
      const failure = await killedMidStream(attempt, true);
      expect(failure, `attempt ${attempt + 1}`).toBeUndefined();
    }
  });
});
