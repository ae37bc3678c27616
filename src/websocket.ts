import type { Server, ServerWebSocket, WebSocketHandler } from "bun";
import type { ConsolaInstance } from "consola";
import { upstreamTlsOptions, type UpstreamTls } from "./upstream.ts";

/** One proxied WebSocket: the client's side (once upgraded) and the backend's. */
export interface WebSocketSession {
  upstream: WebSocket;
  client: ServerWebSocket<WebSocketSession> | undefined;
  /** Messages from the backend that arrived before the client's side was open. */
  pending: (string | ArrayBuffer)[];
}

/**
 * Headers the WebSocket client sets itself, or that describe only the client's connection.
 * Host is kept, as for plain requests: apps such as Jupyter check Origin against it.
 */
const OWN_HANDSHAKE_HEADERS = new Set([
  "sec-websocket-key",
  "sec-websocket-version",
  "sec-websocket-extensions",
  "sec-websocket-protocol",
]);

/** Past this many bytes queued for a slow reader, the session is closed instead of growing. */
export const MAX_BUFFERED_BYTES = 16 * 1024 * 1024;
/** RFC 6455 section 7.4.1: 1013 "Try Again Later", used when a reader is too slow. */
export const CLOSE_TRY_AGAIN_LATER = 1013;

/**
 * Opens a WebSocket to the backend with the client's subprotocols and end-to-end headers,
 * then upgrades the client's request, responding with the subprotocol the backend chose.
 * Returns undefined once upgraded, or an error Response when the backend cannot be reached.
 */
export async function proxyWebSocket(
  req: Request,
  server: Server<WebSocketSession>,
  target: {
    url: string;
    headers: Headers;
    upstreamTimeoutMs: number;
    upstreamTls: UpstreamTls;
    upstreamSocket: string | undefined;
    log: ConsolaInstance;
  },
): Promise<Response | undefined> {
  const { url, headers, log } = target;
  const upstream = new WebSocket(webSocketURL(url, target.upstreamSocket), {
    protocols: offeredProtocols(req),
    headers: handshakeHeaders(headers),
    tls: upstreamTlsOptions(target.upstreamTls),
  });
  upstream.binaryType = "arraybuffer";
  const session: WebSocketSession = { upstream, client: undefined, pending: [] };
  upstream.onmessage = (event) => {
    if (session.client) relayToClient(session.client, event.data);
    else session.pending.push(event.data);
  };

  const failure = await waitForOpen(upstream, target.upstreamTimeoutMs);
  if (failure !== undefined) {
    log.error(`WebSocket ${url}: ${failure}`);
    return new Response("Bad Gateway: the app behind ssl-proxy refused the WebSocket\n", {
      status: 502,
    });
  }
  // Bun.serve would otherwise echo the client's first subprotocol, whatever the backend chose.
  const chosen = upstream.protocol ? { "sec-websocket-protocol": upstream.protocol } : undefined;
  if (!server.upgrade(req, { data: session, ...(chosen ? { headers: chosen } : {}) })) {
    upstream.close();
    return new Response("Bad Request: invalid WebSocket handshake\n", { status: 400 });
  }
  return undefined;
}

/** Turns a backend http(s) URL into ws(s), or into Bun's ws+unix://PATH:TARGET for a Unix socket. */
export function webSocketURL(url: string, socketPath: string | undefined): string {
  if (socketPath === undefined) return url.replace(/^http/, "ws");
  const target = url.slice(url.indexOf("/", url.indexOf("//") + 2));
  return `ws+unix://${socketPath}:${target}`;
}

/** Returns the subprotocols the client offered in Sec-WebSocket-Protocol, in its order. */
export function offeredProtocols(req: Request): string[] {
  return (req.headers.get("sec-websocket-protocol") ?? "")
    .split(",")
    .map((protocol) => protocol.trim())
    .filter((protocol) => protocol !== "");
}

/** Returns the headers to send on the backend handshake: all of `headers` but the client's own. */
export function handshakeHeaders(headers: Headers): Record<string, string> {
  const forwarded: Record<string, string> = {};
  headers.forEach((value, name) => {
    if (!OWN_HANDSHAKE_HEADERS.has(name)) forwarded[name] = value;
  });
  return forwarded;
}

/**
 * Waits for the backend WebSocket to open. Resolves with undefined once it is open, or with the
 * reason when it closes first or `timeoutMs` (0 for none) passes.
 */
export function waitForOpen(upstream: WebSocket, timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const timer = timeoutMs > 0 ? setTimeout(() => resolve("timed out"), timeoutMs) : undefined;
    upstream.onopen = () => {
      clearTimeout(timer);
      resolve(undefined);
    };
    upstream.onclose = (event) => {
      clearTimeout(timer);
      const reason = event.reason ? ` ${event.reason}` : "";
      resolve(`closed before opening (${event.code}${reason})`);
    };
  });
}

function relayToClient(client: ServerWebSocket<WebSocketSession>, data: string | ArrayBuffer) {
  // send() returns 0 when Bun dropped the message because the client reads too slowly.
  if (client.send(data) === 0 || client.getBufferedAmount() > MAX_BUFFERED_BYTES) {
    client.close(CLOSE_TRY_AGAIN_LATER, "client reads too slowly");
    client.data.upstream.close(CLOSE_TRY_AGAIN_LATER, "client reads too slowly");
  }
}

/**
 * Returns a close code that may be sent in a close frame (RFC 6455 section 7.4): 1005 (no code)
 * becomes 1000, and 1006 (connection lost) and other reserved codes become 1011.
 */
export function sendableCloseCode(code: number): number {
  if (code === 1005) return 1000;
  const sendable =
    code === 1000 || (code >= 1001 && code <= 1003) || (code >= 1007 && code <= 1014);
  return sendable || (code >= 3000 && code <= 4999) ? code : 1011;
}

/** The Bun.serve websocket handlers that relay messages and closes between the two sides. */
export const WEBSOCKET_HANDLERS: WebSocketHandler<WebSocketSession> = {
  // Bun's default of 16 MiB; the backend's own limit applies too.
  maxPayloadLength: 16 * 1024 * 1024,
  open(client) {
    const session = client.data;
    session.client = client;
    for (const data of session.pending.splice(0)) relayToClient(client, data);
    session.upstream.onclose = (event) => client.close(sendableCloseCode(event.code), event.reason);
    // Each side has already replied to the ping with a pong; the ping itself is relayed as well.
    session.upstream.addEventListener("ping", (event) => client.ping(event.data));
    session.upstream.onerror = () => client.close(1011, "backend connection failed");
  },
  message(client, message) {
    const { upstream } = client.data;
    if (upstream.readyState !== WebSocket.OPEN) return;
    upstream.send(message);
    if (upstream.bufferedAmount > MAX_BUFFERED_BYTES) {
      upstream.close(CLOSE_TRY_AGAIN_LATER, "backend reads too slowly");
      client.close(CLOSE_TRY_AGAIN_LATER, "backend reads too slowly");
    }
  },
  ping(client, data) {
    const { upstream } = client.data;
    if (upstream.readyState === WebSocket.OPEN) upstream.ping(data);
  },
  close(client, code, reason) {
    const { upstream } = client.data;
    if (upstream.readyState === WebSocket.OPEN || upstream.readyState === WebSocket.CONNECTING) {
      upstream.close(sendableCloseCode(code), reason);
    }
  },
};
