import { X509Certificate, createPrivateKey } from "node:crypto";
import { join } from "node:path";
import { parseSubjectAltNames, type CertificateBundle } from "./certs.ts";
import { ensurePrivateFolder, readOptionalFile, writeFileAtomically } from "./files.ts";

/**
 * Files of one ACME certificate authority under the data folder:
 * `acme/<CA host and path>/account-key.pem`, and per set of names `<names>/key.pem` and
 * `<names>/cert.pem` (the chain). Folders are 0700 and keys 0600.
 */
export interface AcmeStore {
  /** The folder of this CA's files. */
  folder: string;
  accountKeyPath: string;
  certFolder: string;
  keyPath: string;
  certPath: string;
}

/** Works out the storage paths for a CA's directory URL and a set of names. */
export function resolveAcmeStore(
  dataDir: string,
  directoryUrl: string,
  names: readonly string[],
): AcmeStore {
  const url = new URL(directoryUrl);
  const caName = `${url.host}${url.pathname}`.replace(/[^a-z0-9.-]+/gi, "_").replace(/_$/, "");
  const folder = join(dataDir, "acme", caName);
  const certFolder = join(folder, [...names].sort().join("+"));
  return {
    folder,
    accountKeyPath: join(folder, "account-key.pem"),
    certFolder,
    keyPath: join(certFolder, "key.pem"),
    certPath: join(certFolder, "cert.pem"),
  };
}

/** A stored ACME certificate with the facts that decide whether to reuse or renew it. */
export interface StoredCertificate extends CertificateBundle {
  notBefore: Date;
  serialNumber: string;
  issuer: string;
}

/**
 * Loads the stored certificate and key for a name set, or returns undefined when there is
 * none, when it does not cover every name, has expired, or its key does not match.
 */
export async function loadStoredCertificate(
  store: AcmeStore,
  names: readonly string[],
): Promise<StoredCertificate | undefined> {
  const [cert, key] = await Promise.all([
    readOptionalFile(store.certPath),
    readOptionalFile(store.keyPath),
  ]);
  if (cert === undefined || key === undefined) return undefined;
  let described: StoredCertificate;
  try {
    described = describeCertificate(cert, key, store.certPath);
    if (!new X509Certificate(cert).checkPrivateKey(createPrivateKey(key))) return undefined;
  } catch {
    return undefined;
  }
  const covered = new Set(described.names);
  if (!names.every((name) => covered.has(name))) return undefined;
  if (described.notAfter.getTime() <= Date.now()) return undefined;
  return described;
}

/** Describes a PEM chain and key as a StoredCertificate, from the leaf (the first certificate). */
export function describeCertificate(
  cert: string,
  key: string,
  certPath: string,
): StoredCertificate {
  const leaf = new X509Certificate(cert);
  return {
    cert,
    key,
    certPath,
    fingerprint: leaf.fingerprint256.replaceAll(":", " "),
    notBefore: new Date(leaf.validFrom),
    notAfter: new Date(leaf.validTo),
    names: parseSubjectAltNames(leaf.subjectAltName),
    serialNumber: leaf.serialNumber,
    issuer: /CN=([^\n,]+)/.exec(leaf.issuer)?.[1] ?? leaf.issuer,
  };
}

/** Stores a new certificate chain and key for a name set (key first, so a chain never lacks its key). */
export async function saveCertificate(
  store: AcmeStore,
  cert: string,
  key: string,
): Promise<StoredCertificate> {
  await ensurePrivateFolder(store.folder);
  await ensurePrivateFolder(store.certFolder);
  await writeFileAtomically(store.keyPath, key, 0o600);
  await writeFileAtomically(store.certPath, cert, 0o644);
  return describeCertificate(cert, key, store.certPath);
}
