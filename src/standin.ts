import { connect } from "node:net";
import { createSecureContext, createServer } from "node:tls";
import type { ListenAddress } from "./address.ts";
import type { CertificateBundle } from "./certs.ts";
import { ACME_TLS_PROTOCOL, type ChallengeStore } from "./challenges.ts";
import type { ConsolaInstance } from "consola";
import type { ProxyHandler } from "./proxy.ts";
import {
  createClientConnection,
  serveThroughProxy,
  TLS_CIPHERS,
  type ServeOptions,
} from "./server.ts";
import { WEBSOCKET_HANDLERS } from "./websocket.ts";

/**
 * Starts a listener beside Bun.serve on the HTTPS port (both with SO_REUSEPORT) that responds to
 * TLS-ALPN-01 validation connections from `store` and serves every other connection with
 * `bundle`. Bun.serve cannot negotiate acme-tls/1, so during a renewal by TLS-ALPN-01 this
 * listener serves the port alone while Bun.serve is paused.
 *
 * TLS is ended by node:tls, which can choose the protocol per connection; the plain HTTP
 * inside is piped to a private Bun.serve on 127.0.0.1 that runs the proxy handler. (Bun's
 * node:https cannot bind beside Bun.serve, because it is built on Bun.serve without SO_REUSEPORT.)
 */
export async function startStandInListener(
  listen: ListenAddress,
  bundle: CertificateBundle,
  store: ChallengeStore,
  proxy: ProxyHandler,
  options: ServeOptions & { maxBodyBytes: number },
): Promise<{ close(): Promise<void> }> {
  // Each connection to the private server comes from this process, so the client's real address
  // is looked up by the local port of the piping connection.
  const clients = new Map<number, string | undefined>();
  const inner = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    development: false,
    idleTimeout: options.idleTimeoutSeconds,
    maxRequestBodySize: options.maxBodyBytes > 0 ? options.maxBodyBytes : Number.MAX_SAFE_INTEGER,
    websocket: WEBSOCKET_HANDLERS,
    fetch(req, server) {
      const peer = server.requestIP(req);
      const address = peer ? clients.get(peer.port) : undefined;
      const connection = createClientConnection(req, server, address, listen.port, options);
      return serveThroughProxy(req, server, proxy, connection, options);
    },
  });

  const tls = {
    cert: bundle.cert,
    key: bundle.key,
    ciphers: TLS_CIPHERS,
    minVersion: "TLSv1.2",
  } as const;
  const served = createSecureContext(tls);
  const server = createServer({
    ...tls,
    SNICallback: (name, callback) =>
      callback(null, store.tlsContexts.get(name.toLowerCase()) ?? served),
    ALPNCallback: ({ protocols }) =>
      protocols.includes(ACME_TLS_PROTOCOL) ? ACME_TLS_PROTOCOL : "http/1.1",
  });
  server.on("secureConnection", (socket) => {
    // RFC 8737 section 3: a validation connection ends after the handshake.
    if (socket.alpnProtocol === ACME_TLS_PROTOCOL) return void socket.end();
    const pipe = connect(inner.port!, "127.0.0.1");
    pipe.once("connect", () => {
      clients.set(pipe.localPort!, socket.remoteAddress);
      socket.pipe(pipe).pipe(socket);
    });
    const finish = () => {
      clients.delete(pipe.localPort!);
      socket.destroy();
      pipe.destroy();
    };
    socket.on("error", finish).on("close", finish);
    pipe.on("error", finish).on("close", finish);
  });
  server.on("tlsClientError", () => {});

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: listen.host, port: listen.port, reusePort: true }, resolve);
  });
  return {
    /** Stops accepting at once; resolves when the open connections have finished. */
    async close() {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await inner.stop(false);
    },
  };
}
