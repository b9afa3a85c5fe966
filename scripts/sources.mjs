// When the CLI's build is stale: the newest TypeScript source against dist/.
// Used by ensure-built (rebuild before npm start and npm test) and by the
// benchmarks (refuse to measure a build older than the commit it is recorded under).
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

/** When a TypeScript source under src/ or nbd/ last changed (ms since the epoch). */
export function newestSource(repoRoot) {
  const newest = (dir) => {
    let latest = 0;
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, entry.name);
      if (entry.isDirectory()) latest = Math.max(latest, newest(p));
      else if (entry.name.endsWith(".ts")) latest = Math.max(latest, statSync(p).mtimeMs);
    }
    return latest;
  };
  return Math.max(newest(join(repoRoot, "src")), newest(join(repoRoot, "nbd")));
}
