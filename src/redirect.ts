import { requestTarget } from "./proxy.ts";

/** Settings for createRedirectHandler. */
export interface RedirectOptions {
  /** The name to redirect to (the first -domain); undefined to keep the request's host. */
  domain: string | undefined;
  /** Returns the HTTPS port, which is left out of the Location when it is 443. */
  httpsPort: () => number;
}

/**
 * Creates the plain-HTTP handler that responds to every request with a 301 to the same path and
 * query on HTTPS, at the -domain name or else the request's host without its port.
 */
export function createRedirectHandler(options: RedirectOptions): (req: Request) => Response {
  return (req) => {
    const httpsPort = options.httpsPort();
    const portSuffix = httpsPort === 443 ? "" : `:${httpsPort}`;
    const host = options.domain ?? hostWithoutPort(req.headers.get("host"));
    if (!host) {
      return new Response("Bad Request: the request needs a valid Host header\n", { status: 400 });
    }
    const location = `https://${host}${portSuffix}${requestTarget(req.url)}`;
    return new Response(null, { status: 301, headers: { location } });
  };
}

/** Returns the host part of a Host header ("[::1]:80" gives "[::1]"), or undefined if it is not valid. */
export function hostWithoutPort(header: string | null): string | undefined {
  const match = /^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::\d*)?$/i.exec(header ?? "");
  return match?.[1]?.toLowerCase();
}
