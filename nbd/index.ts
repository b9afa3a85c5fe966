export * from "./constants.js";
export * from "./errors.js";
export type * from "./export.js";
export type { Logger } from "./logger.js";
export { NbdServer, type NbdServerOptions } from "./server/server.js";
export { type ServedExport, transmissionFlags, DEFAULT_BLOCK_SIZES } from "./server/exports.js";
export { formatEndpoint, type Endpoint, type Listener } from "./transport.js";
