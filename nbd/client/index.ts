export { NbdClient, connectUri, type ClientLogger, type NbdClientOptions } from "./client.js";
export { NbdDisconnectedError, NbdHandshakeError } from "./errors.js";
export type { NegotiatedExport } from "./handshake.js";
export {
  listExports,
  queryExport,
  type ExportInfo,
  type ExportListing,
  type QueryOptions,
} from "./tooling.js";
