import { homedir } from "node:os";
import { isIP } from "node:net";
import { resolve } from "node:path";
import { isHostname, parseListenAddress, type ListenAddress } from "./address.ts";
import { usageError } from "./errors.ts";

/** The backend that requests are forwarded to. */
export interface Upstream {
  /** Scheme, host and port, as in "http://127.0.0.1:5000"; "http://localhost" for a Unix socket. */
  origin: string;
  /** The Unix socket from `-to unix:/path`, as an absolute path; undefined for TCP. */
  socketPath?: string | undefined;
  /** The path prefix from -to, "" when -to has none, as in "/app". */
  basePath: string;
  /** The query from -to without "?", "" when -to has none. */
  baseQuery: string;
}

/** The user's own certificate chain and private key, from -cert and -key. */
export interface CertificateFiles {
  certPath: string;
  keyPath: string;
}

/** Everything ssl-proxy needs to run, resolved once from flags, environment and defaults. */
export interface ProxyConfig {
  /** The HTTPS listener, from -from (default "127.0.0.1:4430"). */
  listen: ListenAddress;
  /** The backend, from -to (default "http://127.0.0.1:80"). */
  upstream: Upstream;
  /** The user's certificate files from -cert and -key; undefined for a generated certificate. */
  certificateFiles: CertificateFiles | undefined;
  /** Names from -domain, lower-cased; empty when -domain is not given. */
  domains: readonly string[];
  /** Whether the plain-HTTP listener redirects to HTTPS, from -redirectHTTP (default false). */
  redirectHTTP: boolean;
  /** The plain-HTTP listener, from -httpFrom (default ":80"). */
  httpListen: ListenAddress;
  /** Folder for generated keys and certificates, from -dataDir, SSL_PROXY_DATA_DIR or ~/.ssl-proxy. */
  dataDir: string;
  /** Whether dataDir came from -dataDir or SSL_PROXY_DATA_DIR rather than the default. */
  dataDirGiven: boolean;
  /**
   * The user to serve as when started as root, from -user or else SUDO_USER; undefined when
   * neither is set.
   */
  serveAs: { name: string; from: "-user" | "SUDO_USER" } | undefined;
  /** Maximum wait for the backend's response headers in ms, from -upstreamTimeout (default 60s); 0 for none. */
  upstreamTimeoutMs: number;
  /**
   * Seconds without traffic after which a connection is closed, from -idleTimeout (default
   * 120s); 0 for never. Bun.serve counts in whole seconds, up to 255.
   */
  idleTimeoutSeconds: number;
  /** Maximum wait for open requests at shutdown in ms, from -shutdownTimeout (default 10s). */
  shutdownTimeoutMs: number;
  /** ACME settings, used when -domain is given without -cert and -key. */
  acme: AcmeSettings;
  /** Whether responses carry Strict-Transport-Security, from -hsts (default false). */
  hsts: boolean;
  /** Whether each request is logged, from -accessLog (default false). */
  accessLog: boolean;
  /** Largest request body accepted in bytes, from -maxBodySize; 0 for no limit (the default). */
  maxBodyBytes: number;
  /** Extra CA file for an https:// backend, from -upstreamCA; undefined for none. */
  upstreamCAFile: string | undefined;
  /** Whether an https:// backend's certificate is checked; false with -upstreamInsecure. */
  verifyUpstream: boolean;
}

/** Let's Encrypt's production ACME directory, the default of -acmeDirectory. */
export const LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory";
/** Let's Encrypt's staging ACME directory, chosen by -staging. */
export const LETS_ENCRYPT_STAGING_DIRECTORY =
  "https://acme-staging-v02.api.letsencrypt.org/directory";

/** Settings for getting certificates through ACME (RFC 8555). */
export interface AcmeSettings {
  /** The CA's directory URL, from -acmeDirectory or -staging (default Let's Encrypt production). */
  directoryUrl: string;
  /** Contact address for the ACME account, from -email; undefined for none. */
  email: string | undefined;
  /** PEM file of extra roots to trust for the ACME server's own HTTPS, from -acmeCA. */
  caFile: string | undefined;
}

/** The parsed flag values that resolveConfig reads; every value is the raw string given. */
export interface FlagValues {
  from: string;
  to: string;
  cert?: string | undefined;
  key?: string | undefined;
  domain?: string | undefined;
  redirectHTTP: boolean;
  httpFrom: string;
  dataDir?: string | undefined;
  upstreamTimeout: string;
  idleTimeout?: string | undefined;
  shutdownTimeout: string;
  email?: string | undefined;
  acmeDirectory?: string | undefined;
  staging: boolean;
  acmeCA?: string | undefined;
  accessLog?: boolean | undefined;
  hsts?: boolean | undefined;
  upstreamCA?: string | undefined;
  upstreamInsecure?: boolean | undefined;
  maxBodySize?: string | undefined;
  user?: string | undefined;
}

/** A message for the log, produced while resolving, such as the assumed http:// scheme. */
export type ConfigNotice = string;

/**
 * Builds the frozen ProxyConfig from flag values and the environment (flag, then environment,
 * then default). Throws a usage error, before anything is bound or written, on any bad value.
 */
export function resolveConfig(
  flags: FlagValues,
  env: Record<string, string | undefined>,
  notices: ConfigNotice[] = [],
): Readonly<ProxyConfig> {
  const config: ProxyConfig = {
    listen: parseListenAddress("from", flags.from),
    upstream: parseUpstream(flags.to, notices),
    certificateFiles: resolveCertificateFiles(flags.cert, flags.key),
    domains: parseDomains(flags.domain),
    redirectHTTP: flags.redirectHTTP,
    httpListen: parseListenAddress("httpFrom", flags.httpFrom),
    dataDir: resolveDataDir(flags.dataDir, env),
    dataDirGiven: flags.dataDir !== undefined || env.SSL_PROXY_DATA_DIR !== undefined,
    serveAs: resolveServeAs(flags.user, env),
    upstreamTimeoutMs: parseDuration("upstreamTimeout", flags.upstreamTimeout),
    idleTimeoutSeconds: parseIdleTimeout(flags.idleTimeout ?? "120s"),
    shutdownTimeoutMs: parseDuration("shutdownTimeout", flags.shutdownTimeout),
    acme: resolveAcmeSettings(flags),
    accessLog: flags.accessLog ?? false,
    hsts: flags.hsts ?? false,
    upstreamCAFile: flags.upstreamCA ? resolve(flags.upstreamCA) : undefined,
    verifyUpstream: !(flags.upstreamInsecure ?? false),
    maxBodyBytes: parseSize("maxBodySize", flags.maxBodySize ?? "0"),
  };
  if (flags.upstreamCA === "")
    throw usageError(`-upstreamCA must name a PEM file of CA certificates`);
  return Object.freeze(config);
}

function resolveServeAs(
  flag: string | undefined,
  env: Record<string, string | undefined>,
): ProxyConfig["serveAs"] {
  if (flag !== undefined) {
    if (!/^[a-z_][a-z0-9_.-]*\$?$/i.test(flag)) {
      throw usageError(`-user must be a user name such as www-data, got "${flag}"`);
    }
    return { name: flag, from: "-user" };
  }
  return env.SUDO_USER ? { name: env.SUDO_USER, from: "SUDO_USER" } : undefined;
}

function resolveAcmeSettings(flags: FlagValues): AcmeSettings {
  if (flags.staging && flags.acmeDirectory !== undefined) {
    throw usageError(
      `-staging and -acmeDirectory "${flags.acmeDirectory}" conflict: give one of them`,
    );
  }
  const directoryUrl = flags.staging
    ? LETS_ENCRYPT_STAGING_DIRECTORY
    : (flags.acmeDirectory ?? LETS_ENCRYPT_DIRECTORY);
  let url: URL | undefined;
  try {
    url = new URL(directoryUrl);
  } catch {
    url = undefined;
  }
  if (url?.protocol !== "https:") {
    throw usageError(
      `-acmeDirectory must be an https:// URL such as ${LETS_ENCRYPT_STAGING_DIRECTORY}, got "${directoryUrl}"`,
    );
  }
  const email = flags.email === "" ? undefined : flags.email;
  if (email !== undefined && !/^[^@\s:]+@[^@\s:]+\.[^@\s:]+$/.test(email)) {
    throw usageError(`-email must be an address such as you@example.edu, got "${email}"`);
  }
  if (flags.acmeCA === "") throw usageError(`-acmeCA must name a PEM file of CA certificates`);
  return {
    directoryUrl,
    email,
    caFile: flags.acmeCA === undefined ? undefined : resolve(flags.acmeCA),
  };
}

/**
 * Parses -to: `host:port`, `[v6]:port`, an http(s) URL with an optional path and query, or
 * `unix:PATH` for an HTTP server on a Unix socket. Without a scheme, http:// is assumed and a
 * notice reports it.
 */
export function parseUpstream(value: string, notices: ConfigNotice[] = []): Upstream {
  const expected = `-to must be host:port, an http(s) URL such as http://127.0.0.1:5000, or unix:/path/to/socket, got "${value}"`;
  if (/^unix:/i.test(value)) {
    const socketPath = value.slice("unix:".length);
    if (socketPath === "" || socketPath.includes("?") || socketPath.includes("#")) {
      throw usageError(expected);
    }
    return {
      origin: "http://localhost",
      socketPath: resolve(socketPath),
      basePath: "",
      baseQuery: "",
    };
  }
  let text = value;
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) {
    text = `http://${text}`;
    notices.push(`-to "${value}" has no scheme, so http://${value} is used`);
  }

  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw usageError(expected);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw usageError(`${expected} (the scheme must be http or https)`);
  }
  if (url.hostname === "") throw usageError(expected);
  if (url.username !== "" || url.password !== "") {
    throw usageError(`-to must not contain a user name or password, got "${value}"`);
  }
  if (url.hash !== "") {
    throw usageError(`-to must not contain a "#" fragment, got "${value}"`);
  }
  const authority = /^(\[[^\]]*\]|[^/?#:]*)(:\d{1,5})?$/.exec(authorityOf(text));
  if (!authority) {
    throw usageError(`${expected} (the port must be a number)`);
  }
  const host = authority[1]!;
  if (!isIP(host.replace(/^\[|\]$/g, "")) && !isHostname(host)) {
    throw usageError(`${expected} ("${host}" is not a valid host name or IP address)`);
  }

  return {
    origin: url.origin,
    basePath: url.pathname === "/" ? "" : url.pathname,
    baseQuery: url.search.slice(1),
  };
}

/** Names the backend for messages: its URL, or "unix:PATH" for a Unix socket. */
export function describeUpstream(upstream: Upstream): string {
  return upstream.socketPath === undefined
    ? upstream.origin + upstream.basePath
    : `unix:${upstream.socketPath}`;
}

function authorityOf(url: string): string {
  const start = url.indexOf("//") + 2;
  const end = url.slice(start).search(/[/?#]/);
  return end === -1 ? url.slice(start) : url.slice(start, start + end);
}

function resolveCertificateFiles(cert?: string, key?: string): CertificateFiles | undefined {
  if (cert === undefined && key === undefined) return undefined;
  if (cert === undefined || cert === "") {
    throw usageError(
      `-key "${key}" needs -cert too: give both -cert FILE and -key FILE, or neither`,
    );
  }
  if (key === undefined || key === "") {
    throw usageError(
      `-cert "${cert}" needs -key too: give both -cert FILE and -key FILE, or neither`,
    );
  }
  return { certPath: resolve(cert), keyPath: resolve(key) };
}

/** Parses a comma-separated -domain list into lower-case DNS names, rejecting anything a CA would. */
export function parseDomains(value: string | undefined): string[] {
  if (value === undefined) return [];
  const names = value.split(",").map((name) => name.trim().toLowerCase().replace(/\.$/, ""));
  for (const name of names) {
    if (name === "") {
      throw usageError(
        `-domain has an empty name in "${value}": separate names with single commas`,
      );
    }
    if (name.startsWith("*.")) {
      throw usageError(
        `-domain "${name}": wildcard names need a DNS challenge, which ssl-proxy does not support`,
      );
    }
    if (isIP(name.replace(/^\[|\]$/g, "")) !== 0) {
      throw usageError(
        `-domain "${name}" is an IP address: certificate authorities issue only for DNS names`,
      );
    }
    if (!isHostname(name) || !name.includes(".")) {
      throw usageError(
        `-domain "${name}" is not a valid public DNS name such as vm-1234.example.edu`,
      );
    }
  }
  return [...new Set(names)];
}

function resolveDataDir(flag: string | undefined, env: Record<string, string | undefined>): string {
  if (flag === "")
    throw usageError(`-dataDir must not be empty: give a folder such as -dataDir ~/.ssl-proxy`);
  if (flag === undefined && env.SSL_PROXY_DATA_DIR === "") {
    throw usageError(`SSL_PROXY_DATA_DIR is set but empty: unset it or give a folder`);
  }
  return resolve(flag ?? env.SSL_PROXY_DATA_DIR ?? `${homedir()}/.ssl-proxy`);
}

const SIZE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
};

/** Parses a size such as "10MB", "1.5GiB" or "512" (bytes) into whole bytes; "0" means no limit. */
export function parseSize(flag: string, value: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(value);
  const unit = SIZE_UNITS[match?.[2]?.toLowerCase() ?? "?"];
  if (!match || unit === undefined) {
    throw usageError(
      `-${flag} must be a size such as 100MB or 1GiB, or 0 for no limit, got "${value}"`,
    );
  }
  return Math.round(Number(match[1]) * unit);
}

/** The maximum idle timeout that Bun.serve accepts, in seconds. */
const MAX_IDLE_TIMEOUT_SECONDS = 255;

/** Parses -idleTimeout into whole seconds, rounding up, as Bun.serve's idle timer counts. */
export function parseIdleTimeout(value: string): number {
  const seconds = Math.ceil(parseDuration("idleTimeout", value) / 1000);
  if (seconds > MAX_IDLE_TIMEOUT_SECONDS) {
    throw usageError(
      `-idleTimeout "${value}" is too long: the maximum is ${MAX_IDLE_TIMEOUT_SECONDS}s, and 0 keeps idle connections open`,
    );
  }
  return seconds;
}

const DURATION_UNITS_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};
/** The maximum delay a JavaScript timer supports (2^31 - 1 ms, about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Parses a Go-style duration such as "60s", "1m30s", "1.5h" or "500ms" into whole
 * milliseconds; "0" is 0. Durations over about 24 days are rejected, as timers cannot wait longer.
 */
export function parseDuration(flag: string, value: string): number {
  if (value === "0") return 0;
  const parts = [...value.matchAll(/(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)/g)];
  const covered = parts.map((part) => part[0]).join("");
  if (parts.length === 0 || covered !== value) {
    throw usageError(`-${flag} must be a duration such as 30s, 2m or 1500ms, got "${value}"`);
  }
  const ms = Math.round(
    parts.reduce((sum, [, number, unit]) => sum + Number(number) * DURATION_UNITS_MS[unit!]!, 0),
  );
  if (ms > MAX_TIMER_MS) {
    throw usageError(
      `-${flag} "${value}" is too long: the maximum is 596h, and 0 turns the limit off`,
    );
  }
  return ms;
}
