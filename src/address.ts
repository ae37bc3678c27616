import { isIP } from "node:net";
import { usageError } from "./errors.ts";

/** A host and port to listen on. */
export interface ListenAddress {
  /** The host name or IP address to bind, without brackets; "0.0.0.0" for all interfaces. */
  host: string;
  /** The TCP port; 0 lets the system pick one. */
  port: number;
}

const HOSTNAME_PATTERN =
  /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$/i;

/**
 * Tells whether `name` is a syntactically valid DNS host name (RFC 1123 labels). The last label
 * must not be all digits, so "256.1.1.1" and "5000" are rejected instead of read as addresses.
 */
export function isHostname(name: string): boolean {
  const lastLabel = name.replace(/\.$/, "").split(".").pop() ?? "";
  return HOSTNAME_PATTERN.test(name) && !/^\d+$/.test(lastLabel);
}

/**
 * Parses a listen address of the form `host:port`, `:port` or `[v6]:port`.
 * An empty host means every IPv4 interface. Throws a usage error that names `flag`.
 */
export function parseListenAddress(flag: string, value: string): ListenAddress {
  const expected = `-${flag} must be host:port, :port or [IPv6]:port, got "${value}"`;
  if (value.includes("://")) {
    throw usageError(`${expected} (leave out the scheme)`);
  }

  const match = /^(?:\[([^\]]*)\]|([^:[\]]*)):([^:]*)$/.exec(value);
  if (!match) throw usageError(expected);
  const v6Host = match[1];
  const host = v6Host ?? match[2]!;
  if (v6Host !== undefined && isIP(v6Host) !== 6) {
    throw usageError(`${expected} ("${v6Host}" is not an IPv6 address)`);
  }
  if (v6Host === undefined && host !== "" && !isIP(host) && !isHostname(host)) {
    throw usageError(`${expected} ("${host}" is not a valid host name or IPv4 address)`);
  }

  return { host: host === "" ? "0.0.0.0" : host, port: parsePort(flag, value, match[3]!) };
}

/** Parses a decimal TCP port from 0 to 65535, or throws a usage error that names `flag`. */
export function parsePort(flag: string, value: string, port: string): number {
  const number = /^\d{1,5}$/.test(port) ? Number(port) : NaN;
  if (!(number <= 65535)) {
    throw usageError(
      `-${flag} has an invalid port "${port}" in "${value}": use a number from 0 to 65535, where 0 lets the system choose`,
    );
  }
  return number;
}

/** Formats a host and port for a URL, with brackets around an IPv6 address. */
export function formatHostPort(host: string, port: number): string {
  return `${formatHost(host)}:${port}`;
}

/** Adds brackets around an IPv6 address, as URLs and Host headers need. */
export function formatHost(host: string): string {
  return isIP(host) === 6 ? `[${host}]` : host;
}

/** Tells whether `host` is an address that means every interface ("0.0.0.0" or "::"). */
export function isUnspecifiedAddress(host: string): boolean {
  return host === "0.0.0.0" || host === "::" || host === "0:0:0:0:0:0:0:0";
}
