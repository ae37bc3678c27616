import type { ConsolaInstance } from "consola";
import { describeUpstream, type Upstream } from "./config.ts";
import { forEachForwardedHeader, isWebSocketUpgrade, type ClientConnection } from "./headers.ts";
import {
  collectHeaders,
  IncompleteBodyError,
  UpstreamTimeoutError,
  type UpstreamClient,
} from "./upstream.ts";

/**
 * A runtime-neutral request handler: a web Request in, a Response out, or undefined when the
 * connection became a WebSocket through `client.upgradeWebSocket`. The request is only read.
 * The response is the upstream client's, whose headers the caller may edit.
 */
export type ProxyHandler = (
  req: Request,
  client: ClientConnection,
) => Promise<Response | undefined>;

/** Settings for createProxyHandler. */
export interface ProxyOptions {
  upstream: Upstream;
  client: UpstreamClient;
  /** Maximum wait for the backend's response headers in ms; 0 for none. */
  upstreamTimeoutMs: number;
  log: ConsolaInstance;
}

/** Creates the handler that forwards each request to the backend and streams the response back. */
export function createProxyHandler(options: ProxyOptions): ProxyHandler {
  const { upstream, client, upstreamTimeoutMs, log } = options;

  return async (req, connection) => {
    const host = req.headers.get("host");
    if (!host || host.includes(",")) {
      return textResponse(400, "Bad Request: the request needs exactly one Host header");
    }
    const target = requestTarget(req.url);
    const url = joinUpstreamURL(upstream, target);

    // The headers to send are produced from req.headers when the client writes them, in one
    // pass. Editing req.headers first cost about 5 % of the keep-alive rate in `npm run bench`.
    const forEachHeader = (add: (name: string, value: string) => void) =>
      forEachForwardedHeader(req.headers, host, connection, add);
    if (connection.upgradeWebSocket !== undefined && isWebSocketUpgrade(req)) {
      return connection.upgradeWebSocket(url, collectHeaders(forEachHeader));
    }

    try {
      return await client(url, {
        method: req.method,
        forEachHeader,
        body: req.method === "GET" || req.method === "HEAD" ? null : req.body,
        // Bun creates a request's signal when it is first read, which most requests never need.
        get signal() {
          return req.signal;
        },
        timeoutMs: upstreamTimeoutMs,
        onBrokenBody: (error) => logBrokenBody(req, target, error, log),
      });
    } catch (error) {
      return failureResponse(error, { req, target, upstream, log });
    }
  };
}

/**
 * Returns the path and query of a request URL exactly as the runtime passed it on.
 * The URL is not parsed again, because parsing would resolve "." and ".." segments.
 */
export function requestTarget(url: string): string {
  if (url.startsWith("/")) return url;
  const pathStart = url.indexOf("/", url.indexOf("//") + 2);
  return pathStart === -1 ? "/" : url.slice(pathStart);
}

/**
 * Joins the backend's base path and query with the request's: the paths with exactly one
 * slash between them, the queries with "&", as Go's httputil.NewSingleHostReverseProxy does.
 */
export function joinUpstreamURL(upstream: Upstream, target: string): string {
  const queryStart = target.indexOf("?");
  const path = queryStart === -1 ? target : target.slice(0, queryStart);
  const query = queryStart === -1 ? "" : target.slice(queryStart + 1);

  const base = upstream.basePath;
  let joinedPath = base + path;
  if (base.endsWith("/") && path.startsWith("/")) joinedPath = base + path.slice(1);
  else if (base !== "" && !base.endsWith("/") && !path.startsWith("/"))
    joinedPath = `${base}/${path}`;

  const joinedQuery =
    upstream.baseQuery === "" || query === ""
      ? upstream.baseQuery + query
      : `${upstream.baseQuery}&${query}`;
  return upstream.origin + joinedPath + (joinedQuery === "" ? "" : `?${joinedQuery}`);
}

interface FailureContext {
  req: Request;
  target: string;
  upstream: Upstream;
  log: ConsolaInstance;
}

function failureResponse(error: unknown, context: FailureContext): Response {
  const { req, target, log } = context;
  const request = `${req.method} ${target}`;
  const upstream = describeUpstream(context.upstream);
  if (error instanceof IncompleteBodyError) {
    logBrokenBody(req, target, error.cause, log);
    return textResponse(502, "Bad Gateway: the app behind ssl-proxy sent an incomplete answer");
  }
  if (error instanceof UpstreamTimeoutError) {
    log.error(
      `${request}: ${upstream} sent no response headers in time (raise -upstreamTimeout if the app is slow)`,
    );
    return textResponse(504, "Gateway Timeout: the app behind ssl-proxy did not answer in time");
  }
  if (req.signal.aborted) {
    log.debug(`${request}: the client closed the connection before ${upstream} answered`);
    return textResponse(499, "Client Closed Request");
  }
  const reason = isInvalidResponse(error)
    ? `invalid response from ${upstream}: ${(error as Error).message}`
    : `cannot reach ${upstream}: ${describeConnectError(error)}`;
  log.error(`${request}: ${reason}`);
  return textResponse(502, "Bad Gateway: ssl-proxy could not get an answer from the app behind it");
}

/** Tells whether the upstream client rejected the backend's response as breaking HTTP's rules. */
function isInvalidResponse(error: unknown): boolean {
  const code = (error as { code?: string }).code;
  return code === "ERR_INVALID_RESPONSE" || code === "ERR_INVALID_STATUS";
}

function logBrokenBody(req: Request, target: string, error: unknown, log: ConsolaInstance): void {
  log.error(
    `${req.method} ${target}: the response body from the app broke off: ${describeConnectError(error)}`,
  );
}

/** Describes why a connection to the backend failed, in words a user can act on. */
export function describeConnectError(error: unknown): string {
  const code = (error as { code?: string }).code;
  switch (code) {
    case "ECONNREFUSED":
      return "connection refused (is the app running and listening on that address?)";
    case "ENOENT":
      return "no such socket (is the app running and listening on that socket?)";
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return "host name not found (check the host in -to)";
    case "ECONNRESET":
      return "the app closed the connection";
    case "ETIMEDOUT":
      return "connection timed out";
    default: {
      const message = error instanceof Error ? error.message : String(error);
      if (code && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|HOSTNAME/.test(code)) {
        return `${message} (${code}; trust its CA with -upstreamCA FILE)`;
      }
      return code ? `${message} (${code})` : message;
    }
  }
}

/** Builds a plain-text response of `text` and a line end, for answers made by ssl-proxy itself. */
export function textResponse(status: number, text: string): Response {
  return new Response(`${text}\n`, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8" },
  });
}
