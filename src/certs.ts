import {
  X509Certificate,
  createPrivateKey,
  randomBytes,
  webcrypto,
  type KeyObject,
} from "node:crypto";
import { readFile } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import { UserError } from "./errors.ts";
import { ensurePrivateFolder, writeFileAtomically } from "./files.ts";

/** A certificate chain and its private key, ready for the TLS listener. */
export interface CertificateBundle {
  /** PEM text of the leaf certificate followed by any intermediates. */
  cert: string;
  /** PEM text of the private key. */
  key: string;
  /** Path of the chain's file on disk. */
  certPath: string;
  /** SHA-256 of the leaf's DER encoding as upper-case hex pairs separated by spaces. */
  fingerprint: string;
  /** End of the leaf's validity. */
  notAfter: Date;
  /** The leaf's subjectAltName entries: DNS names and IP addresses. */
  names: string[];
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;
const SELF_SIGNED_DAYS = 365;
/** A self-signed certificate this close to expiry is replaced at start. */
const SELF_SIGNED_RENEW_MS = 24 * 60 * 60 * 1000;

/**
 * Loads the user's certificate chain and key, checking that each file is readable PEM, that
 * the key matches the leaf, and that the leaf is valid now. Throws a UserError naming the file.
 */
export async function loadCertificateFiles(
  certPath: string,
  keyPath: string,
): Promise<CertificateBundle> {
  const cert = await readUserFile("-cert", certPath);
  const key = await readUserFile("-key", keyPath);
  const chain = parseChain(cert, certPath);
  const leaf = chain[0]!;
  const privateKey = parsePrivateKey(key, keyPath);

  if (!leaf.checkPrivateKey(privateKey)) {
    throw new UserError(
      `-key "${keyPath}" does not match the certificate in -cert "${certPath}": give the key that was made with this certificate`,
    );
  }
  const now = Date.now();
  if (Date.parse(leaf.validTo) <= now) {
    throw new UserError(
      `-cert "${certPath}" expired on ${new Date(leaf.validTo).toISOString()}: renew the certificate`,
    );
  }
  if (Date.parse(leaf.validFrom) > now) {
    throw new UserError(
      `-cert "${certPath}" is not valid before ${new Date(leaf.validFrom).toISOString()}: check the system clock`,
    );
  }
  return describeBundle(cert, key, certPath, leaf);
}

const READ_ERROR_REASONS: Record<string, string> = {
  ENOENT: "no such file",
  EACCES: "permission denied",
  EISDIR: "is a folder",
};

async function readUserFile(flag: string, path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "";
    const reason = READ_ERROR_REASONS[code] ?? String(error);
    throw new UserError(`cannot read ${flag} "${path}": ${reason}`, { cause: error });
  }
}

/** Reads a PEM file of CA certificates given by `flag`, or throws a UserError naming the file. */
export async function readCaCertificates(flag: string, path: string): Promise<string> {
  const pem = await readUserFile(flag, path);
  if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
    throw new UserError(`${flag} "${path}" is not a PEM file of CA certificates`);
  }
  return pem;
}

function parseChain(pem: string, path: string): X509Certificate[] {
  const blocks = pem.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) {
    throw new UserError(
      `-cert "${path}" is not a PEM certificate: it must contain "-----BEGIN CERTIFICATE-----"`,
    );
  }
  return blocks.map((block, index) => {
    try {
      return new X509Certificate(block);
    } catch (error) {
      throw new UserError(
        `-cert "${path}": certificate ${index + 1} in the file is not valid PEM`,
        { cause: error },
      );
    }
  });
}

function parsePrivateKey(pem: string, path: string): KeyObject {
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(pem)) {
    throw new UserError(
      `-key "${path}" is not a PEM private key: it must contain "-----BEGIN PRIVATE KEY-----" or similar`,
    );
  }
  try {
    return createPrivateKey(pem);
  } catch (error) {
    throw new UserError(
      `-key "${path}" is not a valid private key (an encrypted key needs its passphrase removed)`,
      { cause: error },
    );
  }
}

function describeBundle(
  cert: string,
  key: string,
  certPath: string,
  leaf: X509Certificate,
): CertificateBundle {
  return {
    cert,
    key,
    certPath,
    fingerprint: leaf.fingerprint256.replaceAll(":", " "),
    notAfter: new Date(leaf.validTo),
    names: parseSubjectAltNames(leaf.subjectAltName),
  };
}

/** Splits Node's subjectAltName text ("DNS:a, IP Address:1.2.3.4") into plain names. */
export function parseSubjectAltNames(text: string | undefined): string[] {
  if (!text) return [];
  return text.split(", ").map((entry) => normalizeName(entry.replace(/^(DNS|IP Address):/, "")));
}

/** Lower-cases a DNS name and writes an IPv6 address in its compressed form ("::1"). */
export function normalizeName(name: string): string {
  if (isIP(name) === 6) return new URL(`http://[${name}]/`).hostname.slice(1, -1);
  return name.toLowerCase();
}

/**
 * Returns a self-signed certificate covering `names`. The one stored in `folder` is reused while
 * it is valid for another day and covers every name, so that a browser's security exception
 * stays valid across restarts. Otherwise a new ECDSA P-256 pair is written (key 0600, folder 0700).
 */
export async function ensureSelfSignedCertificate(
  folder: string,
  names: readonly string[],
): Promise<CertificateBundle & { reused: boolean }> {
  const certPath = join(folder, "cert.pem");
  const keyPath = join(folder, "key.pem");
  const stored = await readStoredPair(certPath, keyPath);
  if (stored && isReusable(stored.leaf, stored.privateKey, names)) {
    return { ...describeBundle(stored.cert, stored.key, certPath, stored.leaf), reused: true };
  }

  const { cert, key } = await createSelfSignedCertificate(names);
  await ensurePrivateFolder(folder);
  await writeFileAtomically(keyPath, key, 0o600);
  await writeFileAtomically(certPath, cert, 0o644);
  return { ...describeBundle(cert, key, certPath, new X509Certificate(cert)), reused: false };
}

async function readStoredPair(certPath: string, keyPath: string) {
  try {
    const [cert, key] = await Promise.all([readFile(certPath, "utf8"), readFile(keyPath, "utf8")]);
    return { cert, key, leaf: new X509Certificate(cert), privateKey: createPrivateKey(key) };
  } catch {
    return undefined;
  }
}

function isReusable(
  leaf: X509Certificate,
  privateKey: KeyObject,
  names: readonly string[],
): boolean {
  const covered = new Set(parseSubjectAltNames(leaf.subjectAltName));
  return (
    Date.parse(leaf.validTo) - Date.now() > SELF_SIGNED_RENEW_MS &&
    Date.parse(leaf.validFrom) <= Date.now() &&
    leaf.checkPrivateKey(privateKey) &&
    names.every((name) => covered.has(normalizeName(name)))
  );
}

/** Creates a self-signed ECDSA P-256 certificate, valid for one year, for `names`. */
export async function createSelfSignedCertificate(
  names: readonly string[],
): Promise<{ cert: string; key: string }> {
  const algorithm = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const keys = await webcrypto.subtle.generateKey(algorithm, true, ["sign", "verify"]);
  const notBefore = new Date(Date.now() - 60 * 60 * 1000);
  const notAfter = new Date(notBefore.getTime() + SELF_SIGNED_DAYS * 24 * 60 * 60 * 1000);
  const altNames = names.map((name) => ({ type: isIP(name) ? "ip" : "dns", value: name }) as const);

  // Imported here, so that a start which reuses a stored certificate does not evaluate it.
  const x509 = await import("@peculiar/x509");
  const certificate = await x509.X509CertificateGenerator.createSelfSigned(
    {
      // RFC 5280 section 4.1.2.2: a positive serial of at most 20 octets.
      serialNumber: `01${randomBytes(15).toString("hex")}`,
      name: `CN=${names[0] ?? "localhost"}, O=ssl-proxy self-signed`,
      notBefore,
      notAfter,
      keys,
      signingAlgorithm: algorithm,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        new x509.SubjectAlternativeNameExtension(altNames),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    },
    webcrypto as Crypto,
  );
  const pkcs8 = await webcrypto.subtle.exportKey("pkcs8", keys.privateKey);
  const key = x509.PemConverter.encode(pkcs8, "PRIVATE KEY");
  return { cert: certificate.toString("pem"), key: `${key}\n` };
}
