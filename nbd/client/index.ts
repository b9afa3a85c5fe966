// The NBD client. Typical use:
//
//   const client = await connectUri("nbd://127.0.0.1:10809/disk");
//   await client.write(data, 0, NBD_CMD_FLAG_FUA);
//   await client.read(into, 0);
//   client.on("close", (reason) => { /* reconnect if reason !== undefined */ });
//   await client.close(); // waits for requests in flight, then NBD_CMD_DISC
//
// Failures: NbdRequestError (the server refused one request; the connection
// lives on), NbdProtocolError (the server broke the protocol; the connection is
// closed), NbdDisconnectedError (code "NBD_DISCONNECTED": the connection is
// gone), NbdHandshakeError (the server refused the handshake).
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
