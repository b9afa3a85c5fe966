// Failures particular to the client. Requests the server refused are
// NbdRequestError and servers that break the protocol NbdProtocolError, both
// from nbd/errors.ts.

/** The connection is gone (lost, closed, or never made); pending requests fail with this. */
export class NbdDisconnectedError extends Error {
  readonly code = "NBD_DISCONNECTED";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "NbdDisconnectedError";
  }
}

/**
 * The server refused the handshake. `code` names the reason: the option reply
 * type (e.g. "NBD_REP_ERR_UNKNOWN" for a missing export, "NBD_REP_ERR_TLS_REQD")
 * or "NBD_OLDSTYLE" / "NBD_NOT_FIXED_NEWSTYLE" for servers this client cannot use.
 */
export class NbdHandshakeError extends Error {
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "NbdHandshakeError";
  }
}
