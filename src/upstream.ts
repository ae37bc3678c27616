import { lookup } from "node:dns/promises";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { isIP, type Socket } from "node:net";
import { Readable } from "node:stream";
import { connect as connectTls, rootCertificates } from "node:tls";
import { stripHopByHopHeaders } from "./headers.ts";
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
  /** The client's signal, which aborts when the client goes away. */
  signal: AbortSignal;
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
 * Creates the client that talks to the backend at `origin`: ssl-proxy's own HTTP/1.1 client
 * for http:// and Unix sockets, fetch with the options a proxy needs for https://.
 *
 * Bun's fetch turns a path that starts with "//" into one slash ("//x//y" goes out as "/x//y"),
 * so those requests go through node:http, which sends the path as given.
 */
export function createUpstreamClient(
  origin: string,
  settings: UpstreamTls,
  socketPath: string | undefined = undefined,
): UpstreamClient {
  if (socketPath !== undefined) return createHttp1Client({ unix: socketPath });
  const url = new URL(origin);
  if (url.protocol === "http:") {
    const host = url.hostname.replace(/^\[|\]$/g, "");
    return createHttp1Client({ host, port: Number(url.port || 80) });
  }
  // One object for every request, so that fetch keeps one connection pool for it.
  const tls = upstreamTlsOptions(settings);
  return (url, init) =>
    sendWithDeadline(init, (signal) =>
      hasDoubleSlashPath(url)
        ? sendWithNodeHttp(url, { ...init, signal }, tls)
        : fetch(url, {
            tls,
            method: init.method,
            headers: collectHeaders(init.forEachHeader),
            body: init.body,
            signal,
            // Hand redirects to the client instead of following them.
            redirect: "manual",
            // Keep a gzip body gzip: Bun's fetch would decode it but keep Content-Encoding.
            decompress: false,
            duplex: "half",
          } as RequestInit).then(rejectInvalidStatus),
    ).then((res) => {
      stripHopByHopHeaders(res.headers);
      return readSmallBody(res) ?? watchBody(res, init.onBrokenBody);
    });
}

/**
 * Reads the body into memory when the backend declared a Content-Length of at most
 * SMALL_BODY_BYTES, and returns undefined for other bodies. A body that breaks off rejects with
 * IncompleteBodyError.
 */
function readSmallBody(res: Response): Promise<Response> | undefined {
  const length = Number(res.headers.get("content-length") ?? Number.NaN);
  if (!(length <= SMALL_BODY_BYTES) || res.body === null) return undefined;
  return res.arrayBuffer().then(
    (bytes) => new Response(bytes, { status: res.status, headers: res.headers }),
    (error: unknown) => {
      throw new IncompleteBodyError(error);
    },
  );
}

/**
 * Returns `res` with a body that calls `onBrokenBody` when reading the backend's body fails.
 * The client's connection is then reset, so the cut is visible to it. Erroring with undefined
 * keeps Bun 1.4.5 from also printing the error with a source excerpt.
 * NOTE: this stage runs JavaScript for every chunk, and Bun then no longer pipes fetch's body
 * to the socket natively. When every backend went through fetch, it cost about 30 % of the
 * 1 MiB download rate and 40 % of the small-request rate in `npm run bench`. Without it, Bun prints a multi-line report with a source excerpt for a body
 * that breaks off on the fetch path, and nothing on the node:http path.
 */
function watchBody(res: Response, onBrokenBody: (error: unknown) => void): Response {
  if (res.body === null) return res;
  const reader = res.body.getReader();
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      let chunk: Awaited<ReturnType<typeof reader.read>>;
      try {
        chunk = await reader.read();
      } catch (error) {
        onBrokenBody(error);
        controller.error(undefined);
        return;
      }
      // A client that went away cancels the stream while a read is pending.
      if (cancelled) return;
      if (chunk.done) controller.close();
      else controller.enqueue(chunk.value);
    },
    cancel(reason) {
      cancelled = true;
      return reader.cancel(reason);
    },
  });
  return new Response(body, { status: res.status, headers: res.headers });
}

/**
 * Passes `res` on, or throws when its status is outside 200 to 599, which a Response for the
 * client cannot carry (RFC 9110 section 15 defines only 1xx to 5xx, and fetch consumes 1xx).
 */
function rejectInvalidStatus(res: Response): Response {
  if (res.status >= 200 && res.status <= 599) return res;
  void res.body?.cancel();
  throw invalidStatusError(res.status);
}

/** Creates the error for a response status outside 200 to 599. */
export function invalidStatusError(status: number): Error {
  const message = `the app sent the invalid status code ${status}`;
  return Object.assign(new Error(message), { code: "ERR_INVALID_STATUS" });
}

function hasDoubleSlashPath(url: string): boolean {
  const pathStart = url.indexOf("/", url.indexOf("//") + 2);
  return pathStart !== -1 && url.charCodeAt(pathStart + 1) === 47; // "/"
}

/** Sends a request to an https:// backend through node:https, which keeps a "//" path as given. */
async function sendWithNodeHttp(
  url: string,
  init: UpstreamRequestInit,
  options: ReturnType<typeof upstreamTlsOptions>,
): Promise<Response> {
  const pathStart = url.indexOf("/", url.indexOf("//") + 2);
  const origin = new URL(url.slice(0, pathStart));
  const host = origin.hostname.replace(/^\[|\]$/g, "");
  const port = Number(origin.port || 443);
  // node:https tries only the first address of a name, where fetch tries each in turn. Over
  // a TLS socket connected here, the request itself goes out through node:http.
  const socket = isIP(host) === 0 ? await connectToAny(host, port, options) : undefined;
  const send = socket ? httpRequest : httpsRequest;

  return new Promise((resolve, reject) => {
    const outgoing = send(
      {
        host,
        port,
        method: init.method,
        path: url.slice(pathStart),
        headers: Object.fromEntries(collectHeaders(init.forEachHeader)),
        signal: init.signal,
        ...(socket ? { createConnection: () => socket } : {}),
        ca: options.ca,
        rejectUnauthorized: options.rejectUnauthorized,
      },
      (incoming) => {
        // toResponse throws for a status such as 099 or 600, and an exception thrown inside
        // node:http's parser callback would end the process.
        try {
          resolve(toResponse(incoming, init.method));
        } catch (error) {
          incoming.destroy();
          reject(error);
        }
      },
    );
    outgoing.on("error", reject);
    if (init.body) {
      Readable.fromWeb(init.body as import("node:stream/web").ReadableStream).pipe(outgoing);
    } else {
      outgoing.end();
    }
  });
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

/** Connects over TLS to the first address of `host` that accepts. */
async function connectToAny(
  host: string,
  port: number,
  tls: ReturnType<typeof upstreamTlsOptions>,
): Promise<Socket> {
  return connectToFirst(
    await backendAddresses(host),
    (address) =>
      new Promise<Socket>((resolve, reject) => {
        const socket = connectTls({ host: address, port, servername: host, ...tls }, () =>
          resolve(socket),
        );
        socket.once("error", reject);
      }),
  );
}

function toResponse(incoming: IncomingMessage, method: string): Response {
  const headers = new Headers();
  for (let i = 0; i < incoming.rawHeaders.length; i += 2) {
    headers.append(incoming.rawHeaders[i]!, incoming.rawHeaders[i + 1]!);
  }
  const status = incoming.statusCode ?? 502;
  if (status < 200 || status > 599) throw invalidStatusError(status);
  // RFC 9110 sections 9.3.2, 15.3.5 and 15.4.5: these responses have no body, whatever the headers say.
  const bodyless = method === "HEAD" || status === 204 || status === 304;
  const body = bodyless ? null : (Readable.toWeb(incoming) as ReadableStream<Uint8Array>);
  return new Response(body, { status, headers });
}
