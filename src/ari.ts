import * as acme from "acme-client";
import { AuthorityKeyIdentifierExtension, X509Certificate } from "@peculiar/x509";
import { configureAcmeHttp } from "./acme.ts";
import type { AcmeSettings } from "./config.ts";

/** A renewal window suggested by the CA (RFC 9773 section 4.2). */
export interface RenewalWindow {
  start: Date;
  end: Date;
}

/**
 * Computes a certificate's ARI identifier (RFC 9773 section 4.1): the base64url keyIdentifier
 * of its Authority Key Identifier, a dot, and the base64url bytes of its DER serial number.
 * Returns undefined for a certificate without an Authority Key Identifier.
 */
export function computeCertId(certPem: string): string | undefined {
  const cert = new X509Certificate(certPem);
  const keyId = cert.getExtension(AuthorityKeyIdentifierExtension)?.keyId;
  if (!keyId) return undefined;
  let serial = cert.serialNumber.length % 2 === 0 ? cert.serialNumber : `0${cert.serialNumber}`;
  // A DER INTEGER whose first byte has the high bit set carries a leading zero byte.
  if (Number.parseInt(serial.slice(0, 2), 16) >= 0x80) serial = `00${serial}`;
  return `${toBase64Url(keyId)}.${toBase64Url(serial)}`;
}

function toBase64Url(hex: string): string {
  return Buffer.from(hex, "hex").toString("base64url");
}

/**
 * Queries the CA for when to renew `certPem`, through the renewalInfo resource of its ACME directory.
 * Returns undefined when the CA offers no ARI or the response is unusable; the caller then uses
 * its own schedule. acme-client's HTTP client is used, so that -acmeCA applies.
 */
export async function fetchRenewalWindow(
  settings: AcmeSettings,
  certPem: string,
): Promise<RenewalWindow | undefined> {
  const certId = computeCertId(certPem);
  if (!certId) return undefined;
  await configureAcmeHttp(settings.caFile);
  const directory = await acme.axios.get(settings.directoryUrl);
  const base = directory.data?.renewalInfo;
  if (typeof base !== "string") return undefined;
  const answer = await acme.axios.get(`${base.replace(/\/$/, "")}/${certId}`);
  const start = new Date(answer.data?.suggestedWindow?.start);
  const end = new Date(answer.data?.suggestedWindow?.end);
  if (Number.isNaN(start.getTime()) || Number.isNaN(end.getTime()) || end < start) return undefined;
  return { start, end };
}
