/**
 * The one place that chooses between Bun and Deno. It provides the HTTPS and plain-HTTP
 * listeners, the upstream client and, through the listeners, the WebSocket upgrade of the
 * runtime in use. The request path (proxy.ts, headers.ts) is shared by both.
 *
 * The compiled binary bundles the Deno modules too, so they touch the `Deno` global only when
 * called, and the Bun modules touch `Bun` only when called.
 */
import type { ConsolaInstance } from "consola";
import type { ListenAddress } from "./address.ts";
import type { ProxyConfig } from "./config.ts";
import { isDeno } from "./deno/api.ts";
import { startDenoHttpListener, startDenoHttpsListener } from "./deno/server.ts";
import { createDenoUpstreamClient } from "./deno/upstream.ts";
import { usageError } from "./errors.ts";
import {
  startHttpListener as startBunHttpListener,
  startHttpsListener as startBunHttpsListener,
  type HttpsListener,
  type HttpsOptions,
  type Listener,
} from "./server.ts";
import {
  createUpstreamClient as createBunUpstreamClient,
  type UpstreamClient,
  type UpstreamTls,
} from "./upstream.ts";

/** The runtime this process runs on. */
export const RUNTIME: "bun" | "deno" = isDeno() ? "deno" : "bun";

/** Binds the HTTPS listener of the runtime: Bun.serve or Deno.serve. */
export function startHttpsListener(options: HttpsOptions): Promise<HttpsListener> {
  return RUNTIME === "deno" ? startDenoHttpsListener(options) : startBunHttpsListener(options);
}

/** Binds a plain-HTTP listener of the runtime that serves `handler`. */
export function startHttpListener(
  flag: string,
  listen: ListenAddress,
  handler: (req: Request) => Response,
  log: ConsolaInstance,
): Listener {
  const start = RUNTIME === "deno" ? startDenoHttpListener : startBunHttpListener;
  return start(flag, listen, handler, log);
}

/**
 * Creates the runtime's client for the backend at `origin`. `socketPath` is the Unix socket of
 * `-to unix:PATH`, which only the Bun client supports.
 */
export function createUpstreamClient(
  origin: string,
  settings: UpstreamTls,
  socketPath: string | undefined,
): UpstreamClient {
  return RUNTIME === "deno"
    ? createDenoUpstreamClient(settings)
    : createBunUpstreamClient(origin, settings, socketPath);
}

/**
 * Rejects flags that the runtime cannot serve, before anything is bound. Under Deno that is
 * ACME (-domain without -cert), which needs node:tls ALPN listeners only tested on Bun, and
 * -upstreamInsecure, because Deno's fetch can turn off certificate checks only for the whole
 * process (--unsafely-ignore-certificate-errors).
 */
export function checkRuntimeSupport(config: Readonly<ProxyConfig>): void {
  if (RUNTIME !== "deno") return;
  if (config.domains.length > 0 && !config.certificateFiles) {
    throw usageError(
      "-domain (certificates through ACME) is not supported under Deno: run ssl-proxy with Bun or the compiled binary, or give -cert and -key",
    );
  }
  if (config.upstream.socketPath !== undefined) {
    throw usageError(
      "-to unix:PATH is not supported under Deno: give the backend a TCP address such as 127.0.0.1:5000, or run ssl-proxy with Bun",
    );
  }
  if (!config.verifyUpstream) {
    throw usageError(
      "-upstreamInsecure is not supported under Deno: trust the backend's CA with -upstreamCA FILE, or run ssl-proxy with Bun",
    );
  }
}
