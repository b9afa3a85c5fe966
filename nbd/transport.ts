// The only module that touches node:net: everything else sees a Duplex.
import net from "node:net";
import { once } from "node:events";
import { unlink } from "node:fs/promises";
import type { Duplex } from "node:stream";

export type Endpoint =
  | { readonly kind: "tcp"; readonly host: string; readonly port: number }
  | { readonly kind: "unix"; readonly path: string };

export interface Listener {
  readonly endpoint: Endpoint;
  /** Stop accepting; connections already open are left to their owners. */
  close(): Promise<void>;
}

export function formatEndpoint(endpoint: Endpoint): string {
  if (endpoint.kind === "unix") return endpoint.path;
  return endpoint.host.includes(":")
    ? `[${endpoint.host}]:${endpoint.port}`
    : `${endpoint.host}:${endpoint.port}`;
}

function tune(socket: net.Socket): void {
  socket.setNoDelay(true);
  if (socket.remoteFamily !== undefined) socket.setKeepAlive(true, 30_000);
}

export async function listen(
  endpoint: Endpoint,
  onConnection: (stream: Duplex, peer: string) => void,
): Promise<Listener> {
  const server = net.createServer({ noDelay: true }, (socket) => {
    tune(socket);
    const peer =
      socket.remoteAddress !== undefined
        ? `${socket.remoteAddress}:${socket.remotePort ?? 0}`
        : "unix";
    onConnection(socket, peer);
  });
  if (endpoint.kind === "unix") {
    await unlink(endpoint.path).catch(() => undefined);
    server.listen(endpoint.path);
  } else {
    server.listen(endpoint.port, endpoint.host);
  }
  await Promise.race([
    once(server, "listening"),
    once(server, "error").then(([e]) => Promise.reject(e as Error)),
  ]);
  const address = server.address();
  const bound: Endpoint =
    endpoint.kind === "unix" || address === null || typeof address === "string"
      ? endpoint
      : { kind: "tcp", host: endpoint.host, port: address.port };
  return {
    endpoint: bound,
    // net.Server#close waits for every connection to end; their owners close them.
    close: () => {
      server.close();
      return Promise.resolve();
    },
  };
}

export async function connect(endpoint: Endpoint, timeoutMs = 10_000): Promise<Duplex> {
  const socket =
    endpoint.kind === "unix"
      ? net.createConnection({ path: endpoint.path })
      : net.createConnection({ host: endpoint.host, port: endpoint.port, noDelay: true });
  const timer = setTimeout(() => {
    socket.destroy(
      Object.assign(new Error(`connecting to ${formatEndpoint(endpoint)} timed out`), {
        code: "ETIMEDOUT",
      }),
    );
  }, timeoutMs);
  try {
    await Promise.race([
      once(socket, "connect"),
      once(socket, "error").then(([e]) => Promise.reject(e as Error)),
    ]);
  } finally {
    clearTimeout(timer);
  }
  tune(socket);
  return socket;
}
