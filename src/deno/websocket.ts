import type { ConsolaInstance } from "consola";
import {
  CLOSE_TRY_AGAIN_LATER,
  MAX_BUFFERED_BYTES,
  handshakeHeaders,
  offeredProtocols,
  sendableCloseCode,
  waitForOpen,
  webSocketURL,
} from "../websocket.ts";
import { denoApi, type DenoHttpClient } from "./api.ts";

/** The backend side of a WebSocket under Deno, and how long to wait for it to open. */
export interface DenoWebSocketTarget {
  url: string;
  headers: Headers;
  /** Maximum wait for the backend to accept the WebSocket, in ms; 0 for none. */
  upstreamTimeoutMs: number;
  /** The pool with the -upstreamCA roots for a wss:// backend; undefined for the system's. */
  httpClient: DenoHttpClient | undefined;
  log: ConsolaInstance;
}

/**
 * Opens a WebSocket to the backend with the client's subprotocols and end-to-end headers, then
 * upgrades the client's request with Deno.upgradeWebSocket, choosing the backend's subprotocol.
 * Returns the 101 response, or an error response when the backend or the handshake fails.
 */
export async function proxyDenoWebSocket(
  req: Request,
  target: DenoWebSocketTarget,
): Promise<Response> {
  const { url, log } = target;
  // Deno's WebSocket takes the pool (`client`) that carries the -upstreamCA roots.
  const options = {
    protocols: offeredProtocols(req),
    headers: handshakeHeaders(target.headers),
    ...(target.httpClient ? { client: target.httpClient } : {}),
  };
  const upstream = new WebSocket(webSocketURL(url, undefined), options as Bun.WebSocketOptions);
  upstream.binaryType = "arraybuffer";
  const pending: (string | ArrayBuffer)[] = [];
  upstream.onmessage = (event) => pending.push(event.data);

  const failure = await waitForOpen(upstream, target.upstreamTimeoutMs);
  if (failure !== undefined) {
    log.error(`WebSocket ${url}: ${failure}`);
    upstream.close();
    return new Response("Bad Gateway: the app behind ssl-proxy refused the WebSocket\n", {
      status: 502,
    });
  }
  let upgraded: { socket: WebSocket; response: Response };
  try {
    const protocol = upstream.protocol === "" ? {} : { protocol: upstream.protocol };
    upgraded = denoApi().upgradeWebSocket(req, protocol);
  } catch {
    upstream.close();
    return new Response("Bad Request: invalid WebSocket handshake\n", { status: 400 });
  }
  relayMessages(upgraded.socket, upstream, pending);
  return upgraded.response;
}

/**
 * Relays messages and closes between the client's socket and the backend's. Backend messages
 * that arrive before the client's side is open are queued in `pending` and sent on open.
 */
function relayMessages(
  client: WebSocket,
  upstream: WebSocket,
  pending: (string | ArrayBuffer)[],
): void {
  client.binaryType = "arraybuffer";
  // Deno's send() returns nothing, so the queue is checked through bufferedAmount: a reader
  // with more than MAX_BUFFERED_BYTES waiting closes the session.
  // NOTE: no test runs a reader that falls that far behind under Deno (one does under Bun).
  const send = (to: WebSocket, data: string | ArrayBuffer, reader: string) => {
    to.send(data);
    if (to.bufferedAmount <= MAX_BUFFERED_BYTES) return;
    client.close(CLOSE_TRY_AGAIN_LATER, `${reader} reads too slowly`);
    upstream.close(CLOSE_TRY_AGAIN_LATER, `${reader} reads too slowly`);
  };
  const closeOther = (other: WebSocket, event: CloseEvent) => {
    if (other.readyState === WebSocket.OPEN || other.readyState === WebSocket.CONNECTING) {
      other.close(sendableCloseCode(event.code), event.reason);
    }
  };

  client.onopen = () => {
    for (const data of pending.splice(0)) send(client, data, "client");
  };
  upstream.onmessage = (event) => {
    if (client.readyState === WebSocket.OPEN) send(client, event.data, "client");
    else pending.push(event.data);
  };
  client.onmessage = (event) => {
    if (upstream.readyState === WebSocket.OPEN) send(upstream, event.data, "backend");
  };
  upstream.onclose = (event) => closeOther(client, event);
  client.onclose = (event) => closeOther(upstream, event);
  upstream.onerror = () => client.close(1011, "backend connection failed");
}
