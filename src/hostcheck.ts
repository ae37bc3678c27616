import { textResponse, type ProxyHandler } from "./proxy.ts";

/**
 * The Host header grammar of RFC 9110 section 7.2: uri-host [":" port] from RFC 3986 section
 * 3.2.2, where uri-host is an IP literal in brackets or a reg-name (letters, digits, "-._~",
 * sub-delims and %XX escapes). The comma is left out of the sub-delims, because Bun.serve joins
 * the values of two Host headers with ", ".
 */
const HOST_PATTERN =
  /^(?<name>\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+;=]|%[0-9A-Fa-f]{2})+)(?::(?<port>[0-9]*))?$/;

/** A Host header split into its name and port. */
export interface RequestHost {
  /** The host name or address as sent, brackets of an IPv6 literal included. */
  name: string;
  /** The port as sent, or undefined when the header has none or an empty one. */
  port: string | undefined;
}

/**
 * Parses a Host header value, or returns undefined when it is not a valid host and optional port.
 * The WHATWG URL parser must accept it too, because backends that build a URL from Host (Bun,
 * Deno and Node servers among them) fail on names such as "927.0.0.1" or a port over 65535.
 */
export function parseHost(value: string): RequestHost | undefined {
  const groups = HOST_PATTERN.exec(value)?.groups;
  if (!groups || !URL.canParse(`http://${value}/`)) return undefined;
  return { name: groups.name!, port: groups.port === "" ? undefined : groups.port };
}

/**
 * Tells whether `host` names one of `domains` (lower-case -domain names), ignoring case and one
 * trailing dot. A port must be the listener's own port `localPort`.
 */
export function isServedHost(host: RequestHost, domains: readonly string[], localPort: number) {
  if (host.port !== undefined && Number(host.port) !== localPort) return false;
  const name = host.name.toLowerCase().replace(/\.$/, "");
  return domains.includes(name);
}

/**
 * Returns the error response for a request that must not reach the backend because of its
 * target, or undefined for one that may:
 * - 400 for a Host header that is missing, repeated or not a valid host (RFC 9112 section 3.2);
 * - 400 for CONNECT, which requests a tunnel from a forward proxy to another host (RFC 9110
 *   section 9.3.6), and which ssl-proxy as a reverse proxy does not do;
 * - 421 Misdirected Request (RFC 9110 section 15.5.20) when `domains` is not empty and the
 *   Host names none of them. With no -domain, any valid Host is accepted.
 */
export function checkRequestTarget(
  req: Request,
  domains: readonly string[],
  localPort: number,
): Response | undefined {
  const value = req.headers.get("host");
  const host = value === null ? undefined : parseHost(value);
  if (!host) {
    return textResponse(400, "Bad Request: the request needs exactly one valid Host header");
  }
  if (req.method === "CONNECT") {
    return textResponse(
      400,
      "Bad Request: ssl-proxy is a reverse proxy and does not tunnel CONNECT",
    );
  }
  if (domains.length > 0 && !isServedHost(host, domains, localPort)) {
    return textResponse(421, "Misdirected Request: this server does not serve that host name");
  }
  return undefined;
}

/**
 * Wraps a proxy handler so that requests rejected by checkRequestTarget never reach it. The
 * last Host value that passed is remembered with its port, since most requests repeat it.
 */
export function withTargetCheck(handler: ProxyHandler, domains: readonly string[]): ProxyHandler {
  let passedHost: string | undefined;
  let passedPort = 0;
  return (req, connection) => {
    const host = req.headers.get("host");
    if (host === passedHost && connection.localPort === passedPort && req.method !== "CONNECT") {
      return handler(req, connection);
    }
    const rejected = checkRequestTarget(req, domains, connection.localPort);
    if (rejected) return Promise.resolve(rejected);
    passedHost = host ?? undefined;
    passedPort = connection.localPort;
    return handler(req, connection);
  };
}
