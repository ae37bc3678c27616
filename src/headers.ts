/**
 * Hop-by-hop header fields, which describe one connection and must not be forwarded:
 * RFC 9110 section 7.6.1 (Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding,
 * Upgrade) plus Trailer, which Go's httputil and Caddy also drop.
 */
export const HOP_BY_HOP_HEADERS = [
  "connection",
  "proxy-connection",
  "keep-alive",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
] as const;

/** An RFC 9110 section 5.6.2 token, the syntax of a header name and of a Connection option. */
const TOKEN_PATTERN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * Removes the hop-by-hop headers and every header named in `Connection`, in place. A Connection
 * option that is not a token names no header, and Headers.delete would throw on it.
 */
export function stripHopByHopHeaders(headers: Headers): void {
  const connection = headers.get("connection");
  if (connection) {
    for (const token of connection.split(",")) {
      const name = token.trim();
      if (TOKEN_PATTERN.test(name)) headers.delete(name);
    }
  }
  for (const name of HOP_BY_HOP_HEADERS) headers.delete(name);
}

/** Facts about the connection a request came in on. */
export interface ClientConnection {
  /** The client's IP address, or undefined when the runtime cannot tell. */
  address: string | undefined;
  /** The port the proxy received the request on. */
  localPort: number;
  /**
   * Connects the request to a WebSocket at `url` on the backend, sending `headers`; resolves
   * with undefined once the connection is upgraded. Undefined where the runtime has no support.
   */
  upgradeWebSocket?: ((url: string, headers: Headers) => Promise<Response | undefined>) | undefined;
}

/** Tells whether a comma-separated field value, such as Connection's, lists `option` in any case. */
export function hasListOption(value: string | null, option: string): boolean {
  if (!value) return false;
  return value.split(",").some((item) => item.trim().toLowerCase() === option);
}

/**
 * Tells whether a request is a WebSocket opening handshake (RFC 6455 section 4.1): a GET with
 * `Upgrade: websocket`, `Connection: upgrade` and a Sec-WebSocket-Key. Any other request with
 * an Upgrade header is forwarded as plain HTTP, without it.
 */
export function isWebSocketUpgrade(req: Request): boolean {
  const { headers } = req;
  return (
    req.method === "GET" &&
    headers.get("upgrade")?.toLowerCase() === "websocket" &&
    hasListOption(headers.get("connection"), "upgrade") &&
    headers.has("sec-websocket-key")
  );
}

/**
 * Sets the de facto forwarding headers: appends the client to X-Forwarded-For and sets
 * X-Forwarded-Proto, X-Forwarded-Host and X-Forwarded-Port from this connection, replacing
 * any values the client sent for those three.
 */
export function setForwardedHeaders(
  headers: Headers,
  host: string,
  client: ClientConnection,
): void {
  if (client.address !== undefined) {
    const prior = headers.get("x-forwarded-for");
    headers.set("x-forwarded-for", prior ? `${prior}, ${client.address}` : client.address);
  }
  headers.set("x-forwarded-proto", "https");
  headers.set("x-forwarded-host", host);
  headers.set("x-forwarded-port", String(client.localPort));
}
