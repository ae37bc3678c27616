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

const HOP_BY_HOP: ReadonlySet<string> = new Set(HOP_BY_HOP_HEADERS);

/** An RFC 9110 section 5.6.2 token, the syntax of a header name and of a Connection option. */
const TOKEN_PATTERN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * Removes the hop-by-hop headers and every header named in `Connection`, in place. A Connection
 * option that is not a token names no header, and Headers.delete would throw on it.
 */
export function stripHopByHopHeaders(headers: Headers): void {
  const connection = headers.get("connection");
  if (connection) removeNamedHeaders(headers, connection);
  for (const name of HOP_BY_HOP_HEADERS) headers.delete(name);
}

/** Tells whether `name`, in lower case, is one of HOP_BY_HOP_HEADERS. */
export function isHopByHopHeader(name: string): boolean {
  return HOP_BY_HOP.has(name);
}

/** Removes the headers that the Connection options in `options` name, except hop-by-hop ones. */
export function removeNamedHeaders(headers: Headers, options: string): void {
  for (const option of options.split(",")) {
    const name = option.trim().toLowerCase();
    if (TOKEN_PATTERN.test(name) && !HOP_BY_HOP.has(name)) headers.delete(name);
  }
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
  if (value.length === option.length) return value.toLowerCase() === option;
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
 * Calls `add` with each header the backend gets, in one pass over the client's `headers`, with
 * names in lower case. It leaves out the hop-by-hop headers, those named in Connection, Expect
 * (the front end has already sent "100 Continue" itself) and the client's X-Forwarded-* headers.
 * Then come the de facto forwarding headers: X-Forwarded-For with the client appended, and
 * X-Forwarded-Proto, -Host and -Port of this connection.
 */
export function forEachForwardedHeader(
  headers: Headers,
  host: string,
  client: ClientConnection,
  add: (name: string, value: string) => void,
): void {
  const connection = headers.get("connection");
  const named = connection
    ? connection
        .toLowerCase()
        .split(",")
        .map((name) => name.trim())
    : [];
  let forwardedFor: string | null = null;
  // forEach allocates no entry array per header, as for...of does.
  headers.forEach((value, name) => {
    if (isHopByHopHeader(name) || (named.length > 0 && named.includes(name))) return;
    switch (name) {
      case "expect":
      case "x-forwarded-proto":
      case "x-forwarded-host":
      case "x-forwarded-port":
        break;
      case "x-forwarded-for":
        forwardedFor = value;
        break;
      case "content-length":
        // Bun.serve joins two equal Content-Length headers into "3, 3", which fetch rejects.
        add(name, value.includes(",") ? value.split(",")[0]!.trim() : value);
        break;
      default:
        add(name, value);
    }
  });
  if (client.address !== undefined) {
    add("x-forwarded-for", forwardedFor ? `${forwardedFor}, ${client.address}` : client.address);
  } else if (forwardedFor !== null) {
    add("x-forwarded-for", forwardedFor);
  }
  add("x-forwarded-proto", "https");
  add("x-forwarded-host", host);
  add("x-forwarded-port", String(client.localPort));
}
