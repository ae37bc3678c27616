// The proxies under test: ssl-proxy, nginx and Caddy in front of the same backend, plus the
// backend reached directly over plain HTTP as the baseline.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { nginxConfig, type CertificateFiles } from "./backends.ts";
import { spawnServer, waitForOk, type ServerProcess } from "./processes.ts";
import { findFreePort, pinned, processTree } from "./system.ts";

/** The contenders, in the order of the table's columns. */
export const CONTENDER_NAMES = ["ssl-proxy", "nginx", "caddy", "direct"] as const;

/** One contender's name. */
export type ContenderName = (typeof CONTENDER_NAMES)[number];

/** The settings a contender starts with in front of a backend. */
export interface StartOptions {
  backendPort: number;
  certificate: CertificateFiles;
  /** Folder for configurations and logs. */
  dir: string;
  /** CPU list to pin the proxy to, or undefined. */
  cpus: string | undefined;
  /** Path of the compiled ssl-proxy. */
  binary: string;
  /** Extra ssl-proxy flags, such as -accessLog. */
  proxyArgs: string[];
}

/** A started contender. */
export interface RunningContender {
  /** Origin that clients use, such as https://127.0.0.1:4430. */
  origin: string;
  /** The processes whose memory counts as the proxy's, and none for the direct baseline. */
  pids(): number[];
  /** Milliseconds from the spawn of the proxy to its first proxied 200 response. */
  startupMs: number;
  stop(): Promise<void>;
}

/** Starts contender `name` and waits until it returns 200 for /small through to the backend. */
export async function startContender(
  name: ContenderName,
  options: StartOptions,
): Promise<RunningContender> {
  if (name === "direct") {
    const origin = `http://127.0.0.1:${options.backendPort}`;
    return { origin, pids: () => [], startupMs: 0, stop: async () => {} };
  }
  const port = await findFreePort();
  const argv = CONTENDER_COMMANDS[name](port, options);
  const spawnedAt = performance.now();
  const server = spawnServer(name, pinned(options.cpus, argv), options.dir, {
    // Caddy keeps its data and configuration under these folders.
    XDG_DATA_HOME: join(options.dir, "xdg-data"),
    XDG_CONFIG_HOME: join(options.dir, "xdg-config"),
  });
  const origin = `https://127.0.0.1:${port}`;
  const readyAt = await waitForOk(`${origin}/small`, server.proc).catch(async (error) => {
    await server.stop();
    throw new Error(`${name} did not start (see ${server.logFile}): ${error.message}`);
  });
  return {
    origin,
    pids: () => pidsOf(server),
    startupMs: readyAt - spawnedAt,
    stop: () => server.stop(),
  };
}

function pidsOf(server: ServerProcess): number[] {
  // taskset replaces itself with the program through exec, so the spawned pid is the program's.
  return processTree(server.proc.pid);
}

const CONTENDER_COMMANDS: Record<
  Exclude<ContenderName, "direct">,
  (port: number, options: StartOptions) => string[]
> = {
  "ssl-proxy": (port, options) => [
    options.binary,
    // Started as root, ssl-proxy requires -user; the other contenders run as root too.
    ...(process.getuid?.() === 0 ? ["-user", "root"] : []),
    ...["-from", `127.0.0.1:${port}`, "-to", `127.0.0.1:${options.backendPort}`],
    ...["-cert", options.certificate.cert, "-key", options.certificate.key],
    ...["-dataDir", join(options.dir, "ssl-proxy-data")],
    ...options.proxyArgs,
  ],
  nginx: (port, options) => {
    const root = join(options.dir, `nginx-proxy-${port}`);
    mkdirSync(root, { recursive: true });
    writeFileSync(join(root, "nginx.conf"), nginxProxyConfig(root, port, options));
    return ["nginx", "-p", root, "-c", join(root, "nginx.conf"), "-e", "stderr"];
  },
  caddy: (port, options) => {
    const file = join(options.dir, `Caddyfile-${port}`);
    writeFileSync(file, caddyConfig(port, options));
    return ["caddy", "run", "--config", file, "--adapter", "caddyfile"];
  },
};

/**
 * nginx as a TLS reverse proxy with one worker and upstream keep-alive. Request bodies stream
 * through (proxy_request_buffering off) as they do in ssl-proxy and Caddy, and WebSocket
 * upgrades pass. It sets the same forwarding headers as ssl-proxy.
 */
function nginxProxyConfig(root: string, port: number, options: StartOptions): string {
  return nginxConfig(
    root,
    `  map $http_upgrade $connection_upgrade { default upgrade; "" ""; }
  upstream backend {
    server 127.0.0.1:${options.backendPort};
    keepalive 256;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:${port} ssl backlog=4096;
    ssl_certificate ${options.certificate.cert};
    ssl_certificate_key ${options.certificate.key};
    # nginx 1.22 leaves TLS 1.3 out of its default list, which the other two offer.
    ssl_protocols TLSv1.2 TLSv1.3;
    client_max_body_size 0;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_request_buffering off;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_read_timeout 300s;
    }
  }
`,
  );
}

/**
 * Caddy's reverse_proxy with the benchmark's certificate: no admin endpoint, no automatic
 * HTTPS (so it contacts no CA) and no HTTP/3, whose UDP listener the others lack.
 */
function caddyConfig(port: number, options: StartOptions): string {
  return `{
	admin off
	auto_https off
	servers {
		protocols h1 h2
	}
}
https://:${port} {
	bind 127.0.0.1
	tls ${options.certificate.cert} ${options.certificate.key}
	reverse_proxy 127.0.0.1:${options.backendPort}
}
`;
}
