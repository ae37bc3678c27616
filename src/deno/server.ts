import type { ConsolaInstance } from "consola";
import type { ListenAddress } from "../address.ts";
import { UserError } from "../errors.ts";
import {
  addStrictTransportSecurity,
  checkPortFree,
  describeBindError,
  type HttpsListener,
  type HttpsOptions,
  type Listener,
} from "../server.ts";
import {
  denoApi,
  type DenoHttpServer,
  type DenoServeHandler,
  type DenoServeOptions,
} from "./api.ts";
import { limitRequestBody, tooLargeResponse } from "./body.ts";
import { createDenoHttpClient } from "./upstream.ts";
import { proxyDenoWebSocket } from "./websocket.ts";

/**
 * Binds the HTTPS listener under Deno: Deno.serve with TLS, which offers HTTP/2 and HTTP/1.1
 * through ALPN. A port that cannot be bound throws a UserError saying why and what to do.
 */
export async function startDenoHttpsListener(options: HttpsOptions): Promise<HttpsListener> {
  const { listen, proxy, log } = options;
  await checkPortFree("-from", listen);
  const websocketClient =
    options.upstreamTls.ca === undefined ? undefined : createDenoHttpClient(options.upstreamTls);
  const tls = { cert: options.bundle.cert, key: options.bundle.key };

  const server: DenoHttpServer = bind("-from", listen, tls, log, async (req, info) => {
    const limited = limitRequestBody(withHostHeader(req), options.maxBodyBytes);
    if (limited instanceof Response) return limited;
    const res = await proxy(limited.req, {
      address: info.remoteAddr.hostname,
      localPort: server.addr.port,
      upgradeWebSocket: (url, headers) =>
        proxyDenoWebSocket(req, {
          url,
          headers,
          upstreamTimeoutMs: options.upstreamTimeoutMs,
          httpClient: websocketClient,
          log,
        }),
    });
    if (limited.exceeded()) return tooLargeResponse();
    if (!res) return new Response("Internal Server Error\n", { status: 500 });
    if (options.hsts) addStrictTransportSecurity(res);
    return withoutStreamedLength(res);
  });

  const unsupported = () => {
    // ACME is rejected at start under Deno, so no caller replaces the certificate.
    throw new Error("replacing the certificate is not implemented under Deno");
  };
  return {
    port: server.addr.port,
    replaceCertificate: async () => unsupported(),
    pause: async () => unsupported(),
    resume: unsupported,
    stop: (graceMs) => stopGracefully(server, graceMs, log),
  };
}

/**
 * Returns `req` with a Host header. An HTTP/2 request has none in Deno.serve, which keeps the
 * :authority pseudo-header only in `req.url`, so the Host is taken from there.
 */
function withHostHeader(req: Request): Request {
  if (req.headers.has("host")) return req;
  const headers = new Headers(req.headers);
  // NOTE: Deno.serve fills in "localhost:<port>" as the URL of an HTTP/1.x request without
  // Host, so such a request reaches the backend with that Host where Bun.serve's gets 400.
  headers.set("host", new URL(req.url).host);
  return new Request(req, { headers });
}

/**
 * Drops the Content-Length of a streamed response, which then goes out chunked, as Bun.serve
 * sends every streamed body. Deno.serve 2.9.6 sends the body of a streamed response with a
 * Content-Length about 40 ms late over TLS with HTTP/1.1: one curl request on loopback took
 * 44 ms with the header and 4 ms without it.
 */
function withoutStreamedLength(res: Response): Response {
  if (res.body !== null) res.headers.delete("content-length");
  return res;
}

/** Binds a plain-HTTP listener under Deno (Deno.serve without TLS) that serves `handler`. */
export function startDenoHttpListener(
  flag: string,
  listen: ListenAddress,
  handler: (req: Request) => Response,
  log: ConsolaInstance,
): Listener {
  const server = bind(flag, listen, {}, log, (req) => handler(req));
  return { port: server.addr.port, stop: (graceMs) => stopGracefully(server, graceMs, log) };
}

function bind(
  flag: string,
  listen: ListenAddress,
  tls: Pick<DenoServeOptions, "cert" | "key">,
  log: ConsolaInstance,
  handler: DenoServeHandler,
): DenoHttpServer {
  try {
    return denoApi().serve(
      {
        ...tls,
        hostname: listen.host,
        port: listen.port,
        // Deno.serve would print its own "Listening on" line.
        onListen: () => {},
        onError(error) {
          log.error(`internal error while serving a request: ${describeError(error)}`);
          return new Response("Internal Server Error\n", { status: 500 });
        },
      },
      handler,
    );
  } catch (error) {
    throw new UserError(describeBindError(flag, listen, error), { cause: error });
  }
}

/**
 * Stops accepting connections and waits up to `graceMs` for open requests. Deno.serve has no
 * way to cut them, so after the wait the caller's exit closes them.
 */
async function stopGracefully(server: DenoHttpServer, graceMs: number, log: ConsolaInstance) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const drained = server.shutdown().then(() => false);
  const timedOut = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(true), graceMs);
  });
  if (await Promise.race([drained, timedOut])) {
    log.warn(`open requests did not finish within ${graceMs / 1000}s, closing them`);
  }
  clearTimeout(timer);
}

function describeError(error: unknown): string {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}
