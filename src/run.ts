import { mkdir } from "node:fs/promises";
import { hostname, networkInterfaces } from "node:os";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import { formatHost, formatHostPort, isUnspecifiedAddress } from "./address.ts";
import {
  ensureSelfSignedCertificate,
  loadCertificateFiles,
  normalizeName,
  type CertificateBundle,
} from "./certs.ts";
import type { ProxyConfig } from "./config.ts";
import { UserError } from "./errors.ts";
import { createProxyHandler } from "./proxy.ts";
import { createRedirectHandler } from "./redirect.ts";
import { startServers } from "./server.ts";
import { createUpstreamClient } from "./upstream.ts";

/**
 * Starts ssl-proxy from a resolved config: gets the certificate, binds the listeners, prints
 * where it serves, and stops cleanly on SIGINT or SIGTERM.
 */
export async function runProxy(config: Readonly<ProxyConfig>, log: ConsolaInstance): Promise<void> {
  if (config.domains.length > 0 && !config.certificateFiles) {
    throw new UserError(
      `-domain "${config.domains.join(",")}": getting a certificate from Let's Encrypt is not available in this version; give -cert and -key, or leave out -domain for a self-signed certificate`,
    );
  }
  const bundle = await obtainCertificate(config);

  const proxy = createProxyHandler({
    upstream: config.upstream,
    client: createUpstreamClient(),
    upstreamTimeoutMs: config.upstreamTimeoutMs,
    log,
  });
  const servers = startServers({
    listen: config.listen,
    bundle,
    proxy,
    http: config.redirectHTTP
      ? {
          listen: config.httpListen,
          createHandler: (httpsPort) =>
            createRedirectHandler({ domain: config.domains[0], httpsPort }),
        }
      : undefined,
    log,
  });

  logCertificate(bundle, config, log);
  const httpsURL = `https://${formatHostPort(config.listen.host, servers.httpsPort)}`;
  log.info(`${httpsURL} -> ${config.upstream.origin}${config.upstream.basePath}`);
  if (servers.httpPort !== undefined) {
    const redirectTarget = `https://${config.domains[0] ?? "<host>"}${servers.httpsPort === 443 ? "" : `:${servers.httpsPort}`}`;
    log.info(
      `http://${formatHostPort(config.httpListen.host, servers.httpPort)} -> redirect to ${redirectTarget}`,
    );
  }

  stopOnSignals(servers, config.shutdownTimeoutMs, log);
}

async function obtainCertificate(
  config: Readonly<ProxyConfig>,
): Promise<CertificateBundle & { reused?: boolean }> {
  if (config.certificateFiles) {
    return loadCertificateFiles(config.certificateFiles.certPath, config.certificateFiles.keyPath);
  }
  const folder = join(
    config.dataDir,
    "self-signed",
    config.listen.host.replace(/[^a-z0-9.-]/gi, "_"),
  );
  try {
    await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
    return await ensureSelfSignedCertificate(folder, selfSignedNames(config.listen.host));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EACCES" || code === "EROFS" || code === "ENOTDIR" || code === "EEXIST") {
      throw new UserError(
        `cannot write the self-signed certificate under "${folder}": ${code} (choose another folder with -dataDir)`,
        { cause: error },
      );
    }
    throw error;
  }
}

/**
 * Lists the names a self-signed certificate covers: the -from host, or every interface address
 * when it listens on all of them, plus localhost, 127.0.0.1, ::1 and this machine's host name.
 */
export function selfSignedNames(listenHost: string): string[] {
  const names = [listenHost];
  if (isUnspecifiedAddress(listenHost)) {
    names.length = 0;
    for (const entries of Object.values(networkInterfaces())) {
      for (const entry of entries ?? []) if (!entry.internal) names.push(entry.address);
    }
  }
  names.push("localhost", "127.0.0.1", "::1", hostname());
  return [...new Set(names.filter((name) => name !== "").map(normalizeName))];
}

function logCertificate(
  bundle: CertificateBundle & { reused?: boolean },
  config: Readonly<ProxyConfig>,
  log: ConsolaInstance,
): void {
  const expiry = bundle.notAfter.toISOString().slice(0, 10);
  if (config.certificateFiles) {
    log.info(
      `certificate ${bundle.certPath} for ${bundle.names.join(", ")}, valid until ${expiry}`,
    );
  } else {
    const state = bundle.reused ? "reused" : "created";
    log.info(
      `self-signed certificate ${bundle.certPath} (${state}, valid until ${expiry}) for ${bundle.names.map(formatHost).join(", ")}`,
    );
    log.info(
      "browsers warn about a self-signed certificate: check that they show this fingerprint before you accept it",
    );
  }
  log.info(`SHA256 Fingerprint: ${bundle.fingerprint}`);
}

function stopOnSignals(
  servers: { stop(graceMs: number): Promise<void> },
  graceMs: number,
  log: ConsolaInstance,
): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn(`${signal} again: exiting without waiting for open requests`);
      process.exit(1);
    }
    stopping = true;
    log.info(
      `${signal} received: no new connections; waiting up to ${graceMs / 1000}s for open requests`,
    );
    servers.stop(graceMs).then(() => {
      log.info("stopped");
      process.exit(0);
    });
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
}
