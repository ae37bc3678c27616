import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { Readable } from "node:stream";
import { rootCertificates } from "node:tls";

/** The request fields the proxy passes to the upstream client, as in fetch's RequestInit. */
export interface UpstreamRequestInit {
  method: string;
  headers: Headers;
  body: ReadableStream<Uint8Array> | null;
  signal: AbortSignal;
}

/** Sends one request to the backend and resolves with its response head and streaming body. */
export type UpstreamClient = (url: string, init: UpstreamRequestInit) => Promise<Response>;

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
 * Creates the client that talks to the backend: fetch, with the options a proxy needs.
 *
 * Bun's fetch turns a path that starts with "//" into one slash ("//x//y" goes out as "/x//y"),
 * so those requests go through node:http, which sends the path as given.
 */
export function createUpstreamClient(settings: UpstreamTls): UpstreamClient {
  // One object for every request, so that fetch keeps one connection pool for it.
  const tls = upstreamTlsOptions(settings);
  return (url, init) => {
    if (hasDoubleSlashPath(url)) return sendWithNodeHttp(url, init, tls);
    return fetch(url, {
      tls,
      method: init.method,
      headers: init.headers,
      body: init.body,
      signal: init.signal,
      // Hand redirects to the client instead of following them.
      redirect: "manual",
      // Keep a gzip body gzip: Bun's fetch would decode it but keep Content-Encoding.
      decompress: false,
      duplex: "half",
    } as RequestInit);
  };
}

function hasDoubleSlashPath(url: string): boolean {
  const pathStart = url.indexOf("/", url.indexOf("//") + 2);
  return pathStart !== -1 && url.charCodeAt(pathStart + 1) === 47; // "/"
}

function sendWithNodeHttp(
  url: string,
  init: UpstreamRequestInit,
  tls: ReturnType<typeof upstreamTlsOptions>,
): Promise<Response> {
  const pathStart = url.indexOf("/", url.indexOf("//") + 2);
  const origin = new URL(url.slice(0, pathStart));
  const send = origin.protocol === "https:" ? httpsRequest : httpRequest;

  return new Promise((resolve, reject) => {
    const outgoing = send(
      {
        host: origin.hostname.replace(/^\[|\]$/g, ""),
        port: origin.port || (origin.protocol === "https:" ? 443 : 80),
        method: init.method,
        path: url.slice(pathStart),
        headers: Object.fromEntries(init.headers),
        signal: init.signal,
        ...tls,
      },
      (incoming) => resolve(toResponse(incoming)),
    );
    outgoing.on("error", reject);
    if (init.body) {
      Readable.fromWeb(init.body as import("node:stream/web").ReadableStream).pipe(outgoing);
    } else {
      outgoing.end();
    }
  });
}

function toResponse(incoming: IncomingMessage): Response {
  const headers = new Headers();
  for (let i = 0; i < incoming.rawHeaders.length; i += 2) {
    headers.append(incoming.rawHeaders[i]!, incoming.rawHeaders[i + 1]!);
  }
  const status = incoming.statusCode ?? 502;
  const bodyless = status === 204 || status === 304;
  const body = bodyless ? null : (Readable.toWeb(incoming) as ReadableStream<Uint8Array>);
  return new Response(body, { status, headers });
}
