import { defineConfig } from "vitest/config";

// Interop and e2e tests start real servers and clients (fio, nbdcopy, mkfs) and
// spend most of their time waiting on them; two worker processes keep both cores
// busy on a 2-core machine without starving the servers under test.
const config = defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    teardownTimeout: 30_000,
    // A hung peer must fail its own test, not the whole run.
    bail: 0,
  },
});

// Vitest reads the config from the default export.
export { config as default };
