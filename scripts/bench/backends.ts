// The certificate and the backends that every contender of the benchmark shares.
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { spawnServer, waitForOk, type ServerProcess } from "./processes.ts";
import { findFreePort, pinned } from "./system.ts";

/** Size of the file that the download scenario fetches. */
export const LARGE_FILE_BYTES = 1024 * 1024;

/** The response body of /small. */
export const SMALL_BODY = "hello from the benchmark backend\n";

/** A certificate and key in PEM files, for 127.0.0.1. */
export interface CertificateFiles {
  cert: string;
  key: string;
}

/** Creates one ECDSA P-256 certificate for 127.0.0.1 with openssl, used by every contender. */
export function createCertificate(dir: string): CertificateFiles {
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  const result = Bun.spawnSync(
    ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
      .concat(["-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1"])
      .concat(["-addext", "subjectAltName=IP:127.0.0.1"]),
    { stdout: "pipe", stderr: "pipe" },
  );
  if (result.exitCode !== 0) throw new Error(`openssl req failed: ${result.stderr.toString()}`);
  chmodSync(key, 0o600);
  return { cert, key };
}

/**
 * Builds an nginx.conf with one worker, every path under `root`, and `httpDirectives` inside
 * its http block after the settings that the backend and the nginx contender share.
 */
export function nginxConfig(root: string, httpDirectives: string): string {
  return `worker_processes 1;
daemon off;
user root;
pid ${root}/nginx.pid;
error_log ${root}/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path ${root}/body;
  proxy_temp_path ${root}/proxy;
  fastcgi_temp_path ${root}/fastcgi;
  uwsgi_temp_path ${root}/uwsgi;
  scgi_temp_path ${root}/scgi;
  keepalive_requests 10000000;
${httpDirectives}}
`;
}

/** A running backend and the port it listens on. */
export interface Backend {
  port: number;
  server: ServerProcess;
}

/**
 * Starts nginx with one worker as the fast backend: /small returns a short text and /large.bin
 * is a file of LARGE_FILE_BYTES random bytes. Keep-alive connections are never closed for
 * their request count, so the proxies' upstream pools stay warm.
 */
export async function startNginxBackend(dir: string, cpus: string | undefined): Promise<Backend> {
  const root = join(dir, "nginx-backend");
  mkdirSync(join(root, "www"), { recursive: true });
  writeFileSync(join(root, "www/large.bin"), randomBytes(LARGE_FILE_BYTES));
  const port = await findFreePort();
  const config = nginxConfig(
    root,
    `  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:${port} backlog=4096;
    root ${root}/www;
    location = /small { default_type text/plain; return 200 "${SMALL_BODY.trim()}\\n"; }
  }
`,
  );
  writeFileSync(join(root, "nginx.conf"), config);
  const argv = pinned(cpus, ["nginx", "-p", root, "-c", join(root, "nginx.conf"), "-e", "stderr"]);
  const server = spawnServer("nginx-backend", argv, dir);
  await waitForOk(`http://127.0.0.1:${port}/small`, server.proc);
  return { port, server };
}

/** Starts scripts/bench/aux-backend.ts under Bun: the WebSocket echo and the upload sink. */
export async function startAuxBackend(dir: string, cpus: string | undefined): Promise<Backend> {
  const port = await findFreePort();
  const script = join(import.meta.dir, "aux-backend.ts");
  const server = spawnServer(
    "aux-backend",
    pinned(cpus, [process.execPath, script, String(port)]),
    dir,
  );
  await waitForOk(`http://127.0.0.1:${port}/upload`, server.proc);
  return { port, server };
}
