import type { Server } from "bun";
import type { ConsolaInstance } from "consola";
import { formatHostPort, type ListenAddress } from "./address.ts";
import type { CertificateBundle } from "./certs.ts";
import { UserError } from "./errors.ts";
import type { ProxyHandler } from "./proxy.ts";

/** The listeners of a running proxy. */
export interface RunningServers {
  /** The port the HTTPS listener is bound to (the real one when -from asked for port 0). */
  httpsPort: number;
  /** The port of the plain-HTTP listener, when there is one. */
  httpPort: number | undefined;
  /** Stops accepting connections, waits up to `graceMs` for open requests, then closes them. */
  stop(graceMs: number): Promise<void>;
}

/** What startServers binds and serves. */
export interface ServerOptions {
  listen: ListenAddress;
  bundle: CertificateBundle;
  proxy: ProxyHandler;
  /** The plain-HTTP listener, and a function that makes its handler from the bound HTTPS port. */
  http?:
    | { listen: ListenAddress; createHandler: (httpsPort: number) => (req: Request) => Response }
    | undefined;
  log: ConsolaInstance;
}

/**
 * Binds the HTTPS listener (Bun.serve with TLS) and, if asked, the plain-HTTP listener.
 * A port that cannot be bound throws a UserError saying why and what to do.
 */
export function startServers(options: ServerOptions): RunningServers {
  const { listen, bundle, proxy, log } = options;
  const https = bind("-from", listen, () =>
    Bun.serve({
      hostname: listen.host,
      port: listen.port,
      tls: { cert: bundle.cert, key: bundle.key },
      // Development mode would answer errors with source lines and a stack trace.
      development: false,
      // Uploads stream through; the backend applies its own limit.
      maxRequestBodySize: Number.MAX_SAFE_INTEGER,
      fetch(req, server) {
        // Bun's idle timer also runs while the handler waits for the backend and during quiet
        // gaps in a streamed body, so it would cut slow answers and long streams.
        server.timeout(req, 0);
        const address = server.requestIP(req)?.address;
        return proxy(req, { address, localPort: server.port ?? listen.port });
      },
      error(error) {
        log.error(`internal error while serving a request: ${error.stack ?? error}`);
        return new Response("Internal Server Error\n", { status: 500 });
      },
    }),
  );

  let http: Server<undefined> | undefined;
  if (options.http) {
    const { listen: httpListen, createHandler } = options.http;
    const handler = createHandler(https.port!);
    try {
      http = bind("-httpFrom", httpListen, () =>
        Bun.serve({
          hostname: httpListen.host,
          port: httpListen.port,
          development: false,
          fetch: handler,
        }),
      );
    } catch (error) {
      https.stop(true);
      throw error;
    }
  }

  return {
    httpsPort: https.port!,
    httpPort: http?.port,
    async stop(graceMs) {
      const servers = [https, http].filter((server) => server !== undefined);
      const drained = Promise.all(servers.map((server) => server.stop(false)));
      const timedOut = await Promise.race([
        drained.then(() => false),
        sleep(graceMs).then(() => true),
      ]);
      if (timedOut) {
        log.warn(`open requests did not finish within ${graceMs / 1000}s, closing them`);
        await Promise.all(servers.map((server) => server.stop(true)));
      }
    },
  };
}

function bind(
  flag: string,
  listen: ListenAddress,
  serve: () => Server<undefined>,
): Server<undefined> {
  try {
    return serve();
  } catch (error) {
    throw new UserError(describeBindError(flag, listen, error), { cause: error });
  }
}

/** Explains why a listen address could not be bound, and what the user can do about it. */
export function describeBindError(flag: string, listen: ListenAddress, error: unknown): string {
  const address = formatHostPort(listen.host, listen.port);
  const code = (error as { code?: string }).code;
  switch (code) {
    case "EADDRINUSE":
      return `cannot listen on ${address}: the address is already in use (stop the program using it, or choose another port with ${flag})`;
    case "EACCES":
      return `cannot listen on ${address}: permission denied (ports below 1024 need root: run with sudo, or grant CAP_NET_BIND_SERVICE)`;
    case "EADDRNOTAVAIL":
      return `cannot listen on ${address}: no network interface of this machine has that address (check the host in ${flag})`;
    default:
      return `cannot listen on ${address}: ${error instanceof Error ? error.message : String(error)}`;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref?.());
}
