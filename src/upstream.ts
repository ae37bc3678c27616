import { lookup } from "node:dns/promises";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { connect as connectTcp, isIP, type Socket } from "node:net";
import { Readable } from "node:stream";
import { connect as connectTls, rootCertificates } from "node:tls";

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
export function createUpstreamClient(
  settings: UpstreamTls,
  socketPath: string | undefined = undefined,
): UpstreamClient {
  // One object for every request, so that fetch keeps one connection pool for it.
  const tls = upstreamTlsOptions(settings);
  const socket: { unix?: string } = socketPath === undefined ? {} : { unix: socketPath };
  return (url, init) => {
    if (hasDoubleSlashPath(url)) return sendWithNodeHttp(url, init, { ...tls, ...socket });
    return fetch(url, {
      ...socket,
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
    } as RequestInit).then(rejectInvalidStatus);
  };
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

function invalidStatusError(status: number): Error {
  const message = `the app sent the invalid status code ${status}`;
  return Object.assign(new Error(message), { code: "ERR_INVALID_STATUS" });
}

function hasDoubleSlashPath(url: string): boolean {
  const pathStart = url.indexOf("/", url.indexOf("//") + 2);
  return pathStart !== -1 && url.charCodeAt(pathStart + 1) === 47; // "/"
}

async function sendWithNodeHttp(
  url: string,
  init: UpstreamRequestInit,
  options: ReturnType<typeof upstreamTlsOptions> & { unix?: string },
): Promise<Response> {
  const pathStart = url.indexOf("/", url.indexOf("//") + 2);
  const origin = new URL(url.slice(0, pathStart));
  const secure = origin.protocol === "https:";
  const host = origin.hostname.replace(/^\[|\]$/g, "");
  const port = Number(origin.port || (secure ? 443 : 80));
  // node:http tries only the first address of a name, where fetch tries each in turn.
  const socket =
    options.unix === undefined && isIP(host) === 0
      ? await connectToAny(host, port, secure ? options : undefined)
      : undefined;
  const send = secure && !socket ? httpsRequest : httpRequest;

  return new Promise((resolve, reject) => {
    const outgoing = send(
      {
        host,
        port,
        method: init.method,
        path: url.slice(pathStart),
        headers: Object.fromEntries(init.headers),
        signal: init.signal,
        ...(socket ? { createConnection: () => socket } : {}),
        ...(options.unix === undefined ? {} : { socketPath: options.unix }),
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
 * Connects to the first address of `host` that accepts, over TLS when `tls` is given.
 * "localhost" and names under it mean both loopback addresses (RFC 6761 section 6.3).
 */
async function connectToAny(
  host: string,
  port: number,
  tls: ReturnType<typeof upstreamTlsOptions> | undefined,
): Promise<Socket> {
  const addresses =
    host === "localhost" || host.endsWith(".localhost")
      ? ["::1", "127.0.0.1"]
      : (await lookup(host, { all: true })).map((entry) => entry.address);
  let failure: unknown;
  for (const address of addresses) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const socket = tls
          ? connectTls({ host: address, port, servername: host, ...tls }, () => resolve(socket))
          : connectTcp({ host: address, port }, () => resolve(socket));
        socket.once("error", reject);
      });
    } catch (error) {
      failure = error;
    }
  }
  throw failure;
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
