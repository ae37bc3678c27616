import type { Server } from "bun";
import type { ConsolaInstance } from "consola";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { formatHostPort, type ListenAddress } from "./address.ts";
import type { CertificateBundle } from "./certs.ts";
import { UserError } from "./errors.ts";
import { hasListOption, type ClientConnection } from "./headers.ts";
import { slowRequests, type SlowRequestWatch } from "./slowrequests.ts";
import type { ProxyHandler } from "./proxy.ts";
import type { UpstreamTls } from "./upstream.ts";
import { proxyWebSocket, WEBSOCKET_HANDLERS, type WebSocketSession } from "./websocket.ts";

/**
 * The TLS 1.2 cipher suites offered: ECDHE key exchange with an AEAD cipher only, so no CBC and
 * no static RSA. TLS 1.3 uses its own suites, all AEAD; TLS 1.0 and 1.1 are refused by Bun.
 */
export const TLS_CIPHERS = [
  "ECDHE-ECDSA-AES128-GCM-SHA256",
  "ECDHE-RSA-AES128-GCM-SHA256",
  "ECDHE-ECDSA-AES256-GCM-SHA384",
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-ECDSA-CHACHA20-POLY1305",
  "ECDHE-RSA-CHACHA20-POLY1305",
].join(":");

/** The Strict-Transport-Security value sent with -hsts: one year, this host only. */
export const HSTS_VALUE = "max-age=31536000";

/** Adds Strict-Transport-Security to `res` for -hsts, unless the backend sent its own. */
export function addStrictTransportSecurity(res: Response): void {
  if (!res.headers.has("strict-transport-security")) {
    res.headers.set("strict-transport-security", HSTS_VALUE);
  }
}

/** A listener that can be stopped gracefully. */
export interface Listener {
  /** The bound port (the real one when port 0 was asked for). */
  port: number;
  /** Stops accepting connections, waits up to `graceMs` for open requests, then closes them. */
  stop(graceMs: number): Promise<void>;
}

/** The HTTPS listener, whose certificate can be replaced while it serves. */
export interface HttpsListener extends Listener {
  /** Starts serving `bundle` to new connections without dropping open ones. */
  replaceCertificate(bundle: CertificateBundle): Promise<void>;
  /**
   * Stops accepting connections, letting open ones finish, until resume(). Another listener
   * with SO_REUSEPORT must hold the port meanwhile, or new connections are refused.
   */
  pause(): Promise<void>;
  /** Serves `bundle` again after pause(). */
  resume(bundle: CertificateBundle): void;
}

/** Settings of startHttpsListener: the address, certificate and handler it serves. */
export interface HttpsOptions {
  listen: ListenAddress;
  bundle: CertificateBundle;
  proxy: ProxyHandler;
  /** Maximum wait for the backend to accept a WebSocket, in ms; 0 for none. */
  upstreamTimeoutMs: number;
  /** Certificate checking for a wss:// backend. */
  upstreamTls: UpstreamTls;
  /** The backend's Unix socket from `-to unix:PATH`; undefined for TCP. */
  upstreamSocket: string | undefined;
  /** Largest request body accepted in bytes; 0 for no limit. */
  maxBodyBytes: number;
  /** Seconds without traffic after which a connection is closed; 0 for never. */
  idleTimeoutSeconds: number;
  /** Whether responses carry Strict-Transport-Security, from -hsts. */
  hsts: boolean;
  log: ConsolaInstance;
}

/** Settings of serveThroughProxy and createClientConnection. */
export interface ServeOptions {
  idleTimeoutSeconds: number;
  hsts: boolean;
  upstreamTimeoutMs: number;
  upstreamTls: UpstreamTls;
  upstreamSocket: string | undefined;
  log: ConsolaInstance;
}

/**
 * Describes the connection of a Bun.serve request for the proxy handler: the client's address
 * `address`, the listener's port `localPort`, and the WebSocket upgrade.
 */
export function createClientConnection(
  req: Request,
  server: Server<WebSocketSession>,
  address: string | undefined,
  localPort: number,
  options: ServeOptions,
): ClientConnection {
  return {
    address,
    localPort,
    upgradeWebSocket: (url, headers) => proxyWebSocket(req, server, { url, headers, ...options }),
  };
}

/**
 * Shortest -idleTimeout, in seconds, for which switching off Bun's idle timer waits until a
 * request is slow, 100 to 200 ms after it started. Under this limit it is switched off as each
 * request starts. NOTE: 8 s is a chosen margin, not a measured one. Bun's timer counts in
 * coarse ticks, and the -idleTimeout tests see closes up to about 4 s late.
 */
const LAZY_IDLE_TIMER_SECONDS = 8;

/**
 * Serves one request of a Bun.serve listener through the proxy handler, WebSocket upgrades
 * included. Bun's idle timer also runs while the handler waits for the backend, so it is off
 * while a slow backend is awaited, and -upstreamTimeout bounds that wait instead. The setting
 * stays on the connection, so -idleTimeout is set again for the response and the idle time
 * after it, except for Server-Sent Events, whose streams may stay quiet for any time. Bun counts
 * the new limit from the last read, so after a wait over half the limit the connection would be
 * cut at once, and the timer then stays off.
 */
export async function serveThroughProxy(
  req: Request,
  server: Server<WebSocketSession>,
  proxy: ProxyHandler,
  connection: ClientConnection,
  options: ServeOptions,
): Promise<Response | undefined> {
  const idle = options.idleTimeoutSeconds;
  const started = performance.now();
  let timerOff = false;
  const switchOffTimer = () => {
    server.timeout(req, 0);
    timerOff = true;
  };
  let watch: SlowRequestWatch | undefined;
  if (idle >= LAZY_IDLE_TIMER_SECONDS) watch = slowRequests.watch(switchOffTimer);
  else if (idle > 0) switchOffTimer();
  const closing = hasListOption(req.headers.get("connection"), "close");

  let res: Response | undefined;
  try {
    res = await proxy(req, connection);
  } finally {
    if (watch) watch.onSlow = undefined;
  }
  if (!res) return res;

  // Bun.serve 1.4.5 sends "Connection: close" and closes the connection after the response
  // only when the response carries the header (RFC 9112 section 9.6).
  if (closing) res.headers.set("connection", "close");
  if (options.hsts) addStrictTransportSecurity(res);
  if (idle === 0) return res;
  if (res.headers.get("content-type")?.startsWith("text/event-stream")) {
    server.timeout(req, 0);
  } else if (timerOff && performance.now() - started < idle * 500) {
    server.timeout(req, idle);
  }
  return res;
}

/**
 * Binds the HTTPS listener: Bun.serve with TLS. It binds with SO_REUSEPORT so that a listener
 * with a new certificate can be bound beside it (Bun's server.reload does not change the
 * certificate). A port that cannot be bound throws a UserError saying why and what to do.
 */
export async function startHttpsListener(options: HttpsOptions): Promise<HttpsListener> {
  const { listen, proxy, log } = options;
  // SO_REUSEPORT would let the bind succeed beside another program's reuse-port socket, so
  // first check with an exclusive bind that the port is free.
  await checkPortFree("-from", listen);
  const serve = (bundle: CertificateBundle, port: number) => {
    // Bun 1.4.5 reads server.port with a getsockname() call each time, so it is read once.
    let boundPort = port;
    const server: Server<WebSocketSession> = Bun.serve({
      hostname: listen.host,
      port,
      reusePort: true,
      // Clients that offer h2 through ALPN get HTTP/2 (marked experimental in Bun 1.4.5), the
      // others HTTP/1.1. Browsers open WebSockets over HTTP/1.1, which still upgrades.
      http2: true,
      tls: { cert: bundle.cert, key: bundle.key, ciphers: TLS_CIPHERS },
      // Development mode would send error pages with source lines and a stack trace.
      development: false,
      idleTimeout: options.idleTimeoutSeconds,
      // Uploads stream through; without -maxBodySize only the backend's own limit applies.
      maxRequestBodySize: options.maxBodyBytes > 0 ? options.maxBodyBytes : Number.MAX_SAFE_INTEGER,
      websocket: WEBSOCKET_HANDLERS,
      fetch(req, server) {
        const address = server.requestIP(req)?.address;
        const connection = createClientConnection(req, server, address, boundPort, options);
        return serveThroughProxy(req, server, proxy, connection, options);
      },
      error(error) {
        log.error(`internal error while serving a request: ${error.stack ?? error}`);
        return new Response("Internal Server Error\n", { status: 500 });
      },
    });
    boundPort = server.port ?? port;
    return server;
  };

  const first = bind("-from", listen, () => serve(options.bundle, listen.port));
  const port = first.port!;
  let server: Server<WebSocketSession> | undefined = first;
  const retired = new Set<Server<WebSocketSession>>();
  let warnedOfResets = false;
  // stop(false) stops accepting at once; connections already open finish on the old
  // certificate, however long they last, so nothing waits for them here.
  const retire = (previous: Server<WebSocketSession> | undefined) => {
    if (!previous) return;
    retired.add(previous);
    void previous.stop(false).then(() => retired.delete(previous));
    if (!warnedOfResets && resetsQueuedConnections()) {
      warnedOfResets = true;
      log.warn(
        `new connections queued on the old listener when it closed may have been reset (run "sysctl -w ${MIGRATE_SETTING}=1" to pass them to the new listener)`,
      );
    }
  };
  return {
    port,
    async replaceCertificate(bundle) {
      const previous = server;
      server = bind("-from", { host: listen.host, port }, () => serve(bundle, port));
      retire(previous);
    },
    async pause() {
      const previous = server;
      server = undefined;
      retire(previous);
    },
    resume(bundle) {
      server ??= bind("-from", { host: listen.host, port }, () => serve(bundle, port));
    },
    stop: (graceMs) => {
      const open = [server, ...retired].filter((entry) => entry !== undefined);
      return stopGracefully(open, graceMs, log);
    },
  };
}

/** The Linux setting that passes a closing reuse-port listener's queued connections to another. */
export const MIGRATE_SETTING = "net.ipv4.tcp_migrate_req";

/**
 * Tells whether closing a listener resets the connections still waiting in its accept queue,
 * as Linux does while tcp_migrate_req is 0 (Linux 5.14 added the setting). False elsewhere.
 */
export function resetsQueuedConnections(): boolean {
  try {
    const path = `/proc/sys/${MIGRATE_SETTING.replaceAll(".", "/")}`;
    return readFileSync(path, "utf8").trim() === "0";
  } catch {
    return false;
  }
}

/** Binds a plain-HTTP listener (Bun.serve without TLS) that serves `handler`. */
export function startHttpListener(
  flag: string,
  listen: ListenAddress,
  handler: (req: Request) => Response,
  log: ConsolaInstance,
): Listener {
  const server = bind(flag, listen, () =>
    Bun.serve({ hostname: listen.host, port: listen.port, development: false, fetch: handler }),
  );
  return { port: server.port!, stop: (graceMs) => stopGracefully([server], graceMs, log) };
}

async function stopGracefully(
  servers: Server<WebSocketSession>[],
  graceMs: number,
  log: ConsolaInstance,
) {
  const drained = Promise.all(servers.map((server) => server.stop(false)));
  const timedOut = await Promise.race([drained.then(() => false), sleep(graceMs).then(() => true)]);
  if (timedOut) {
    log.warn(`open requests did not finish within ${graceMs / 1000}s, closing them`);
    await Promise.all(servers.map((server) => server.stop(true)));
  }
}

function bind(
  flag: string,
  listen: ListenAddress,
  serve: () => Server<WebSocketSession>,
): Server<WebSocketSession> {
  try {
    return serve();
  } catch (error) {
    throw new UserError(describeBindError(flag, listen, error), { cause: error });
  }
}

/** Binds and releases `listen` with an exclusive socket, throwing the same UserError as a failed bind. */
export async function checkPortFree(flag: string, listen: ListenAddress): Promise<void> {
  if (listen.port === 0) return;
  const probe = createServer();
  await new Promise<void>((resolve, reject) => {
    probe.once("error", (error) =>
      reject(new UserError(describeBindError(flag, listen, error), { cause: error })),
    );
    probe.listen({ host: listen.host, port: listen.port, exclusive: true }, () =>
      probe.close(() => resolve()),
    );
  });
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
