import { createSecureContext, createServer, type SecureContext, type Server } from "node:tls";
import type { ListenAddress } from "./address.ts";
import { UserError } from "./errors.ts";
import { requestTarget } from "./proxy.ts";
import { checkPortFree, describeBindError } from "./server.ts";

/** The path prefix of HTTP-01 challenge requests (RFC 8555 section 8.3). */
export const HTTP_CHALLENGE_PREFIX = "/.well-known/acme-challenge/";
/** The ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737 section 3). */
export const ACME_TLS_PROTOCOL = "acme-tls/1";

/** Challenge responses waiting for the CA to fetch them. */
export class ChallengeStore {
  /** HTTP-01 key authorizations by token. */
  readonly httpTokens = new Map<string, string>();
  /** TLS-ALPN-01 certificates by DNS name. */
  readonly tlsContexts = new Map<string, SecureContext>();

  /** Stores a TLS-ALPN-01 certificate and key (PEM) for `name`. */
  addTlsCertificate(name: string, cert: string, key: string): void {
    this.tlsContexts.set(name, createSecureContext({ cert, key }));
  }
}

/**
 * Wraps a plain-HTTP handler so that HTTP-01 challenge requests are served first, from
 * `store`, whatever the Host header is.
 */
export function withHttpChallenges(
  store: ChallengeStore,
  next: (req: Request) => Response,
): (req: Request) => Response {
  return (req) => {
    const path = pathOf(req.url);
    if (!path.startsWith(HTTP_CHALLENGE_PREFIX)) return next(req);
    const keyAuthorization = store.httpTokens.get(path.slice(HTTP_CHALLENGE_PREFIX.length));
    if (keyAuthorization === undefined) {
      return new Response("Not Found: no such ACME challenge\n", { status: 404 });
    }
    return new Response(keyAuthorization, { headers: { "content-type": "text/plain" } });
  };
}

function pathOf(url: string): string {
  const target = requestTarget(url);
  const queryStart = target.indexOf("?");
  return queryStart === -1 ? target : target.slice(0, queryStart);
}

/** Returns the plain-HTTP response when -redirectHTTP is off: only challenges are served there. */
export function notFoundHandler(): Response {
  return new Response("Not Found: this port serves only ACME challenges; use https://\n", {
    status: 404,
  });
}

/**
 * Listens on the HTTPS address with node:tls while no certificate is served yet, and
 * responds to TLS-ALPN-01 validation connections from `store`. Bun.serve cannot negotiate the
 * acme-tls/1 protocol, so this listener takes its place until the first certificate is obtained.
 */
export async function startTlsAlpnResponder(
  listen: ListenAddress,
  store: ChallengeStore,
): Promise<{ close(): Promise<void> }> {
  const server: Server = createServer({
    SNICallback: (name, callback) => callback(null, store.tlsContexts.get(name.toLowerCase())),
    // Only validation connections are accepted: anything else gets a no_application_protocol alert.
    ALPNCallback: ({ protocols }) =>
      protocols.includes(ACME_TLS_PROTOCOL) ? ACME_TLS_PROTOCOL : undefined,
  });
  // RFC 8737 section 3: the validation connection is closed once the handshake is done.
  server.on("secureConnection", (socket) => socket.end());
  server.on("tlsClientError", () => {});

  await checkPortFree("-from", listen);
  await new Promise<void>((resolve, reject) => {
    server.once("error", (error) => {
      reject(new UserError(describeBindError("-from", listen, error), { cause: error }));
    });
    server.listen({ host: listen.host, port: listen.port, reusePort: true }, resolve);
  });
  return {
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
