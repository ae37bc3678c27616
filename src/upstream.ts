import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { rootCertificates } from "node:tls";
import { createHttp1Client } from "./http1.ts";

/** The request fields the proxy passes to the upstream client, as in fetch's RequestInit. */
export interface UpstreamRequestInit {
  method: string;
  /**
   * Calls `add` with each header to send, names in lower case. The headers are produced on
   * each call, from the client's request (forEachForwardedHeader), so no copy is kept.
   */
  forEachHeader: (add: (name: string, value: string) => void) => void;
  body: ReadableStream<Uint8Array> | null;
  /**
   * The client's signal, which aborts when the client goes away. Read it only when needed,
   * since reading it may create it.
   */
  readonly signal: AbortSignal;
  /** Maximum wait for the response head in ms, from -upstreamTimeout, or 0 for no limit. */
  timeoutMs: number;
  /**
   * Called once when the response body breaks off after the response has started, as when
   * the app closes the connection mid-body. The client's connection is then reset.
   */
  onBrokenBody: (error: unknown) => void;
}

/**
 * Bodies up to this size with a Content-Length are read whole before the response starts:
 * they keep their Content-Length, skip the per-chunk work of a stream, and when one breaks off
 * the client still gets a 502.
 */
export const SMALL_BODY_BYTES = 64 * 1024;

/** Raised when the backend sent no response head within UpstreamRequestInit.timeoutMs. */
export class UpstreamTimeoutError extends Error {
  readonly code = "ERR_UPSTREAM_TIMEOUT";

  constructor(timeoutMs: number) {
    super(`the app sent no response headers within ${timeoutMs} ms`);
  }
}

/**
 * Calls `send` with a signal that aborts when the client goes away, or when the response head
 * takes longer than `init.timeoutMs`, which then rejects with UpstreamTimeoutError. For
 * clients built on fetch. One controller serves both causes: AbortSignal.any cost about a
 * tenth of the throughput, and the onabort property less CPU than addEventListener.
 */
export async function sendWithDeadline(
  init: UpstreamRequestInit,
  send: (signal: AbortSignal) => Promise<Response>,
): Promise<Response> {
  const abort = new AbortController();
  let timedOut = false;
  init.signal.onabort = () => abort.abort();
  const timer =
    init.timeoutMs > 0
      ? setTimeout(() => {
          timedOut = true;
          abort.abort();
        }, init.timeoutMs)
      : undefined;
  try {
    return await send(abort.signal);
  } catch (error) {
    throw timedOut ? new UpstreamTimeoutError(init.timeoutMs) : error;
  } finally {
    clearTimeout(timer);
  }
}

/** Raised instead of a response when a body of at most SMALL_BODY_BYTES broke off. */
export class IncompleteBodyError extends Error {
  readonly code = "ERR_INCOMPLETE_BODY";

  constructor(cause: unknown) {
    super("the response body from the app broke off", { cause });
  }
}

/**
 * Sends one request to the backend and resolves with its response head and streaming body. The
 * response's headers are editable and contain no hop-by-hop fields.
 */
export type UpstreamClient = (url: string, init: UpstreamRequestInit) => Promise<Response>;

/** Collects the headers that `forEachHeader` produces into a Headers object. */
export function collectHeaders(forEachHeader: UpstreamRequestInit["forEachHeader"]): Headers {
  const headers = new Headers();
  forEachHeader((name, value) => headers.append(name, value));
  return headers;
}

/** Certificate checking for an https:// backend. */
export interface UpstreamTls {
  /** PEM roots trusted besides the system's, from -upstreamCA; undefined for none. */
  ca: string | undefined;
  /** Whether the certificate is checked at all; false with -upstreamInsecure. */
  verify: boolean;
}

/** Returns the TLS options for fetch, node:https and WebSocket from `settings`. */
export function upstreamTlsOptions(settings: UpstreamTls): {
  ca?: string[];
  rejectUnauthorized: boolean;
} {
  return {
    ...(settings.ca === undefined ? {} : { ca: [...rootCertificates, settings.ca] }),
    rejectUnauthorized: settings.verify,
  };
}

/**
 * Creates the client that talks to the backend at `origin` under Bun: ssl-proxy's own HTTP/1.1
 * client, over TCP, TLS for https://, or the Unix socket `socketPath`.
 */
export function createUpstreamClient(
  origin: string,
  settings: UpstreamTls,
  socketPath: string | undefined = undefined,
): UpstreamClient {
  if (socketPath !== undefined) return createHttp1Client({ unix: socketPath });
  const url = new URL(origin);
  const host = url.hostname.replace(/^\[|\]$/g, "");
  if (url.protocol === "http:") return createHttp1Client({ host, port: Number(url.port || 80) });
  const tls = {
    ...(isIP(host) === 0 ? { serverName: host } : {}),
    ...upstreamTlsOptions(settings),
  };
  return createHttp1Client({ host, port: Number(url.port || 443), tls });
}

/** Creates the error for a response status outside 200 to 599. */
export function invalidStatusError(status: number): Error {
  const message = `the app sent the invalid status code ${status}`;
  return Object.assign(new Error(message), { code: "ERR_INVALID_STATUS" });
}

/**
 * Lists the addresses to try for a backend host, in order. An IP address stands for itself,
 * and "localhost" and names under it mean both loopback addresses (RFC 6761 section 6.3).
 */
export async function backendAddresses(host: string): Promise<string[]> {
  if (isIP(host) !== 0) return [host];
  if (host === "localhost" || host.endsWith(".localhost")) return ["::1", "127.0.0.1"];
  return (await lookup(host, { all: true })).map((entry) => entry.address);
}

/** Returns the first connection that `connect` makes to one of `addresses`, or throws the last failure. */
export async function connectToFirst<T>(
  addresses: string[],
  connect: (address: string) => Promise<T>,
): Promise<T> {
  let failure: unknown;
  for (const address of addresses) {
    try {
      return await connect(address);
    } catch (error) {
      failure = error;
    }
  }
  throw failure;
}
