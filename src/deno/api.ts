/**
 * The parts of Deno's global namespace that ssl-proxy uses, typed here because the project
 * compiles against Bun's types only. Members follow `deno types` of Deno 2.9.6.
 */
export interface DenoApi {
  serve(options: DenoServeOptions, handler: DenoServeHandler): DenoHttpServer;
  upgradeWebSocket(
    req: Request,
    options?: { protocol?: string; idleTimeout?: number },
  ): { socket: WebSocket; response: Response };
  createHttpClient(options: { caCerts?: string[]; allowHost?: boolean }): DenoHttpClient;
}

/** Options of Deno.serve; `cert` and `key` (PEM text) turn on TLS. */
export interface DenoServeOptions {
  hostname: string;
  port: number;
  cert?: string;
  key?: string;
  reusePort?: boolean;
  onListen?: (addr: { hostname: string; port: number }) => void;
  onError?: (error: unknown) => Response | Promise<Response>;
}

/** Facts about the connection of one request, as Deno.serve passes them to the handler. */
export interface DenoServeInfo {
  remoteAddr: { transport: string; hostname?: string; port?: number };
}

/** A request handler of Deno.serve. */
export type DenoServeHandler = (req: Request, info: DenoServeInfo) => Response | Promise<Response>;

/** A running Deno.serve listener. */
export interface DenoHttpServer {
  addr: { hostname: string; port: number };
  /** Stops accepting connections and resolves once the open requests have finished. */
  shutdown(): Promise<void>;
  finished: Promise<void>;
}

/** A fetch connection pool with its own TLS roots and header rules. */
export interface DenoHttpClient {
  close(): void;
}

/** Returns Deno's global namespace; call it only when the process runs under Deno. */
export function denoApi(): DenoApi {
  return (globalThis as unknown as { Deno: DenoApi }).Deno;
}

/** Tells whether this process runs under Deno rather than Bun. */
export function isDeno(): boolean {
  return "Deno" in globalThis;
}
