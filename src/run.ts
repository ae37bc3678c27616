import { hostname, networkInterfaces } from "node:os";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import { formatHost, formatHostPort, isUnspecifiedAddress } from "./address.ts";
import type { ChallengeType } from "./acme.ts";
import {
  ensureSelfSignedCertificate,
  loadCertificateFiles,
  normalizeName,
  readCaCertificates,
  type CertificateBundle,
} from "./certs.ts";
import {
  ChallengeStore,
  notFoundHandler,
  startTlsAlpnResponder,
  withHttpChallenges,
} from "./challenges.ts";
import { describeUpstream, type ProxyConfig } from "./config.ts";
import { UserError } from "./errors.ts";
import { withAccessLog } from "./accesslog.ts";
import { withTargetCheck } from "./hostcheck.ts";
import { createProxyHandler, type ProxyHandler } from "./proxy.ts";
import { leaveRoot } from "./privileges.ts";
import { createRedirectHandler } from "./redirect.ts";
import { scheduleRenewal, renewalTime } from "./renewal.ts";
import {
  checkRuntimeSupport,
  createUpstreamClient,
  startHttpListener,
  startHttpsListener,
} from "./runtime.ts";
import type { HttpsListener, Listener } from "./server.ts";
import { startStandInListener } from "./standin.ts";
import { loadStoredCertificate, resolveAcmeStore, type StoredCertificate } from "./store.ts";
import type { UpstreamTls } from "./upstream.ts";
import { mkdir } from "node:fs/promises";

/**
 * Starts ssl-proxy from a resolved config: binds the plain-HTTP listener when it is needed,
 * gets the certificate, binds the HTTPS listener, prints where it serves, renews ACME
 * certificates in the background, and stops cleanly on SIGINT or SIGTERM.
 */
export async function runProxy(config: Readonly<ProxyConfig>, log: ConsolaInstance): Promise<void> {
  checkRuntimeSupport(config);
  // Started as root, this starts ssl-proxy again as the service user before anything is bound.
  const rootWarning = await leaveRoot(config);
  const usesAcme = config.domains.length > 0 && !config.certificateFiles;
  // Files are checked before any port is bound: the certificate files, or the -acmeCA file.
  const localCertificate = usesAcme ? undefined : await obtainLocalCertificate(config);
  if (usesAcme) await (await loadAcme()).configureAcmeHttp(config.acme.caFile);
  const upstreamTls = {
    ca: config.upstreamCAFile && (await readCaCertificates("-upstreamCA", config.upstreamCAFile)),
    verify: config.verifyUpstream,
  };
  if (!upstreamTls.verify) {
    log.warn("-upstreamInsecure: the certificate of the https:// backend is not checked");
  }

  const challenges = new ChallengeStore();
  let httpsPort = config.listen.port;
  const http = startPlainHttpListener(config, challenges, () => httpsPort, log);
  let certificate: CertificateBundle & { reused?: boolean };
  try {
    certificate =
      localCertificate ??
      (await obtainAcmeCertificate(config, challenges, http !== undefined, log));
  } catch (error) {
    await http?.stop(0);
    throw error;
  }

  const forward = createProxyHandler({
    upstream: config.upstream,
    client: createUpstreamClient(config.upstream.origin, upstreamTls, config.upstream.socketPath),
    upstreamTimeoutMs: config.upstreamTimeoutMs,
    log,
  });
  const upstreamName = describeUpstream(config.upstream);
  const checked = withTargetCheck(forward, config.domains);
  const proxy = config.accessLog ? withAccessLog(checked, upstreamName, log) : checked;
  const https = await startHttpsListener({
    listen: config.listen,
    bundle: certificate,
    proxy,
    upstreamTimeoutMs: config.upstreamTimeoutMs,
    upstreamTls,
    upstreamSocket: config.upstream.socketPath,
    maxBodyBytes: config.maxBodyBytes,
    idleTimeoutSeconds: config.idleTimeoutSeconds,
    hsts: config.hsts,
    log,
  }).catch(async (error: unknown) => {
    await http?.stop(0);
    throw error;
  });
  httpsPort = https.port;

  logCertificate(certificate, config, usesAcme, log);
  if (rootWarning) log.warn(rootWarning);
  log.info(`https://${formatHostPort(config.listen.host, https.port)} -> ${upstreamName}`);
  if (http) {
    const target = config.redirectHTTP
      ? `redirect to https://${config.domains[0] ?? "<host>"}${https.port === 443 ? "" : `:${https.port}`}`
      : "ACME challenges only";
    log.info(`http://${formatHostPort(config.httpListen.host, http.port)} -> ${target}`);
  }

  let cancelRenewal = () => {};
  if (usesAcme) {
    cancelRenewal = scheduleRenewal({
      current: certificate as StoredCertificate,
      renew: (current) =>
        http !== undefined
          ? renewAcmeCertificate(config, challenges, ["http-01"], log)
          : renewWithStandIn(config, challenges, { https, current, proxy, upstreamTls }, log),
      install: (next) => https.replaceCertificate(next),
      suggestWindow: async (current) =>
        (await import("./ari.ts")).fetchRenewalWindow(config.acme, current.cert),
      log,
    });
  }
  stopOnSignals([https, http], config.shutdownTimeoutMs, () => cancelRenewal(), log);
  process.on("SIGHUP", () => void reloadCertificateFiles(config, https, log));
}

/**
 * Reads -cert and -key again on SIGHUP and serves them to new connections; open connections
 * keep theirs. A pair that cannot be used leaves the one being served in place.
 */
async function reloadCertificateFiles(
  config: Readonly<ProxyConfig>,
  https: HttpsListener,
  log: ConsolaInstance,
): Promise<void> {
  const files = config.certificateFiles;
  if (!files) {
    log.info("SIGHUP received: nothing to reload, since -cert and -key are not used");
    return;
  }
  let bundle: CertificateBundle;
  try {
    bundle = await loadCertificateFiles(files.certPath, files.keyPath);
    await https.replaceCertificate(bundle);
  } catch (error) {
    const reason = error instanceof UserError ? error.message : String(error);
    log.error(`SIGHUP received: still serving the previous certificate, because ${reason}`);
    return;
  }
  log.info(
    `SIGHUP received: reloaded ${bundle.certPath} for ${bundle.names.join(", ")}, valid until ${bundle.notAfter.toISOString().slice(0, 10)}`,
  );
  log.info(`SHA256 Fingerprint: ${bundle.fingerprint}`);
}

/**
 * Starts the plain-HTTP listener when -redirectHTTP or ACME needs it. For ACME alone, a port
 * that cannot be bound only costs HTTP-01, so it is a warning and TLS-ALPN-01 is used instead.
 */
function startPlainHttpListener(
  config: Readonly<ProxyConfig>,
  challenges: ChallengeStore,
  httpsPort: () => number,
  log: ConsolaInstance,
): Listener | undefined {
  const usesAcme = config.domains.length > 0 && !config.certificateFiles;
  if (!config.redirectHTTP && !usesAcme) return undefined;
  const fallback = config.redirectHTTP
    ? createRedirectHandler({ domain: config.domains[0], httpsPort })
    : notFoundHandler;
  try {
    return startHttpListener(
      "-httpFrom",
      config.httpListen,
      withHttpChallenges(challenges, fallback),
      log,
    );
  } catch (error) {
    if (config.redirectHTTP || !(error instanceof UserError)) throw error;
    log.warn(
      `${error.message}; HTTP-01 is not available, so TLS-ALPN-01 on the HTTPS port is used`,
    );
    return undefined;
  }
}

/**
 * Loads acme.ts, and with it acme-client and @peculiar/x509, on first use. Only -domain needs
 * them, and evaluating them made every start of the compiled binary about 20 ms slower.
 */
function loadAcme(): Promise<typeof import("./acme.ts")> {
  return import("./acme.ts");
}

async function obtainAcmeCertificate(
  config: Readonly<ProxyConfig>,
  challenges: ChallengeStore,
  hasHttp: boolean,
  log: ConsolaInstance,
): Promise<StoredCertificate & { reused?: boolean }> {
  const store = resolveAcmeStore(config.dataDir, config.acme.directoryUrl, config.domains);
  const stored = await loadStoredCertificate(store, config.domains);
  if (stored) return { ...stored, reused: true };

  const { obtainCertificate, warnIfNotLocal } = await loadAcme();
  void warnIfNotLocal(config.domains, log);
  const types: ChallengeType[] = hasHttp ? ["http-01", "tls-alpn-01"] : ["tls-alpn-01"];
  return obtainCertificate({
    settings: config.acme,
    domains: config.domains,
    store,
    responders: {
      store: challenges,
      types,
      startTlsAlpn: () => startTlsAlpnResponder(config.listen, challenges),
    },
    log,
  });
}

async function renewAcmeCertificate(
  config: Readonly<ProxyConfig>,
  challenges: ChallengeStore,
  types: ChallengeType[],
  log: ConsolaInstance,
): Promise<StoredCertificate> {
  const { obtainCertificate } = await loadAcme();
  return obtainCertificate({
    settings: config.acme,
    domains: config.domains,
    store: resolveAcmeStore(config.dataDir, config.acme.directoryUrl, config.domains),
    responders: { store: challenges, types },
    log,
  });
}

/**
 * Renews by TLS-ALPN-01 while HTTPS keeps being served: a node:tls stand-in that can respond to
 * acme-tls/1 takes the port beside Bun.serve, Bun.serve stops accepting until the order is
 * done, then serves again and the stand-in closes.
 */
async function renewWithStandIn(
  config: Readonly<ProxyConfig>,
  challenges: ChallengeStore,
  running: {
    https: HttpsListener;
    current: StoredCertificate;
    proxy: ProxyHandler;
    upstreamTls: UpstreamTls;
  },
  log: ConsolaInstance,
): Promise<StoredCertificate> {
  const { https, current, proxy } = running;
  const listen = { host: config.listen.host, port: https.port };
  const options = {
    upstreamTimeoutMs: config.upstreamTimeoutMs,
    upstreamTls: running.upstreamTls,
    upstreamSocket: config.upstream.socketPath,
    maxBodyBytes: config.maxBodyBytes,
    idleTimeoutSeconds: config.idleTimeoutSeconds,
    hsts: config.hsts,
    log,
  };
  const standIn = await startStandInListener(listen, current, challenges, proxy, options);
  await https.pause();
  try {
    return await renewAcmeCertificate(config, challenges, ["tls-alpn-01"], log);
  } finally {
    https.resume(current);
    // Connections open on the stand-in finish there; nothing needs to wait for them.
    void standIn.close();
  }
}

async function obtainLocalCertificate(
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
    // The data folder may be the user's own, so its mode is left as it is; the folder of the
    // key is made private below.
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
  bundle: CertificateBundle & { reused?: boolean; issuer?: string },
  config: Readonly<ProxyConfig>,
  usesAcme: boolean,
  log: ConsolaInstance,
): void {
  const expiry = bundle.notAfter.toISOString().slice(0, 10);
  if (usesAcme) {
    const acmeCert = bundle as StoredCertificate & { reused?: boolean };
    const state = acmeCert.reused ? "stored" : "new";
    log.info(
      `certificate ${bundle.certPath} (${state}) for ${bundle.names.join(", ")} from ${acmeCert.issuer}, valid until ${bundle.notAfter.toISOString()}, renewal at ${renewalTime(acmeCert).toISOString()}`,
    );
  } else if (config.certificateFiles) {
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
  listeners: (Listener | undefined)[],
  graceMs: number,
  beforeStop: () => void,
  log: ConsolaInstance,
): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn(`${signal} again: exiting without waiting for open requests`);
      process.exit(1);
    }
    stopping = true;
    beforeStop();
    log.info(
      `${signal} received: no new connections; waiting up to ${graceMs / 1000}s for open requests`,
    );
    const running = listeners.filter((listener) => listener !== undefined);
    Promise.all(running.map((listener) => listener.stop(graceMs))).then(() => {
      log.info("stopped");
      process.exit(0);
    });
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
}
