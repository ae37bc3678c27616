import { readFileSync, writeFileSync } from "node:fs";
import { isIPv6 } from "node:net";
import { join } from "node:path";
import { makeTempDir, run } from "./helpers.ts";

// Extensions for the throwaway CAs, and an `openssl ca` setup that can backdate a certificate.
// `openssl ca -startdate` also works in OpenSSL 3.0, which lacks the -not_before option of
// `openssl req` and `x509` (added in 3.4, as its CHANGES file says).
function opensslConfig(folder: string): string {
  return `[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[root_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[intermediate_ext]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[leaf_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
authorityKeyIdentifier = keyid
[ca]
default_ca = backdated_ca
[backdated_ca]
database = ${folder}/index.txt
new_certs_dir = ${folder}
serial = ${folder}/serial
default_md = sha256
policy = any_name
unique_subject = no
[any_name]
commonName = supplied
`;
}

/** Runs the openssl CLI and returns its stdout. Throws an error with its stderr if it fails. */
export async function openssl(args: string[], stdin?: string): Promise<string> {
  const result = await run(["openssl", ...args], stdin === undefined ? {} : { stdin });
  if (result.exitCode !== 0) throw new Error(`openssl ${args.join(" ")} failed:\n${result.stderr}`);
  return result.stdout;
}

/** Returns the SHA-256 fingerprint of the first certificate in `pem`, as "AB CD ...". */
export async function opensslFingerprint(pem: string): Promise<string> {
  const output = await openssl(["x509", "-noout", "-fingerprint", "-sha256"], pem);
  return output.trim().replace(/^.*=/, "").replaceAll(":", " ");
}

/** Returns the subjectAltName entries of a certificate as lower-case names and compressed IPv6. */
export async function opensslAltNames(pem: string): Promise<string[]> {
  const output = await openssl(["x509", "-noout", "-ext", "subjectAltName"], pem);
  const entries = output.split("\n").slice(1).join("").trim().split(/,\s*/);
  return entries.map((entry) => {
    const name = entry.replace(/^(DNS|IP Address):/, "");
    return isIPv6(name) ? new URL(`http://[${name}]/`).hostname.slice(1, -1) : name.toLowerCase();
  });
}

/** Returns notBefore and notAfter of a certificate, in milliseconds since the epoch. */
export async function opensslValidity(
  pem: string,
): Promise<{ notBefore: number; notAfter: number }> {
  const args = ["x509", "-noout", "-dateopt", "iso_8601", "-startdate", "-enddate"];
  const output = await openssl(args, pem);
  const notBefore = Date.parse(/notBefore=(.+)/.exec(output)![1]!);
  const notAfter = Date.parse(/notAfter=(.+)/.exec(output)![1]!);
  return { notBefore, notAfter };
}

/** Writes a new ECDSA P-256 private key to `path`. */
export async function writeEcKey(path: string): Promise<void> {
  const curve = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
  await openssl(["genpkey", ...curve, "-out", path]);
}

/** Throwaway PKI: root CA -> intermediate -> leaf for localhost, plus broken variants. */
export interface Fixtures {
  folder: string;
  root: string;
  intermediate: string;
  leaf: string;
  leafKey: string;
  chain: string;
  otherKey: string;
  expired: string;
  expiredKey: string;
  derCertificate: string;
  derKey: string;
}

/**
 * Creates the Fixtures files in a new folder under test/.tmp named after `prefix`.
 * `expiredIssuer` selects who signs the expired certificate (valid 2020 to 2021): "self", like a
 * self-signed one that ssl-proxy stored in an old run, or "root", like one a user passes with -cert.
 */
export async function makeFixtures(
  prefix: string,
  options: { expiredIssuer: "self" | "root" },
): Promise<Fixtures> {
  const folder = makeTempDir(prefix);
  const file = (name: string) => join(folder, name);
  const config = file("openssl.cnf");
  writeFileSync(config, opensslConfig(folder));
  writeFileSync(file("index.txt"), "");
  writeFileSync(file("serial"), "01\n");
  const newKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  const request = (name: string, subject: string) => [
    ...["req", "-new", ...newKey, "-config", config, "-subj", subject],
    ...["-keyout", file(`${name}.key`), "-out", file(`${name}.csr`)],
  ];
  const sign = (name: string, issuer: string, serial: string, extensions: string) => [
    ...["x509", "-req", "-in", file(`${name}.csr`), "-out", file(`${name}.pem`)],
    ...["-CA", file(`${issuer}.pem`), "-CAkey", file(`${issuer}.key`), "-set_serial", serial],
    ...["-days", "2", "-extfile", config, "-extensions", extensions],
  ];

  await openssl([
    ...["req", "-x509", "-new", ...newKey, "-config", config, "-extensions", "root_ext"],
    ...["-subj", "/CN=ssl-proxy test root", "-days", "2"],
    ...["-keyout", file("root.key"), "-out", file("root.pem")],
  ]);
  await openssl(request("intermediate", "/CN=ssl-proxy test intermediate"));
  await openssl(sign("intermediate", "root", "2", "intermediate_ext"));
  await openssl(request("leaf", "/CN=localhost"));
  await openssl(sign("leaf", "intermediate", "3", "leaf_ext"));
  const leaf = readFileSync(file("leaf.pem"), "utf8");
  writeFileSync(file("chain.pem"), leaf + readFileSync(file("intermediate.pem"), "utf8"));
  await writeEcKey(file("other.key"));

  await openssl(request("expired", "/CN=localhost"));
  const expiredSigner =
    options.expiredIssuer === "self"
      ? ["-selfsign", "-keyfile", file("expired.key")]
      : ["-cert", file("root.pem"), "-keyfile", file("root.key")];
  await openssl([
    ...["ca", "-batch", "-notext", "-config", config, "-extensions", "leaf_ext", ...expiredSigner],
    ...["-in", file("expired.csr"), "-out", file("expired.pem")],
    ...["-startdate", "20200101000000Z", "-enddate", "20210101000000Z"],
  ]);
  await openssl(["x509", "-in", file("leaf.pem"), "-outform", "DER", "-out", file("leaf.der")]);
  await openssl(["pkey", "-in", file("leaf.key"), "-outform", "DER", "-out", file("leaf-key.der")]);

  return {
    folder,
    root: file("root.pem"),
    intermediate: file("intermediate.pem"),
    leaf: file("leaf.pem"),
    leafKey: file("leaf.key"),
    chain: file("chain.pem"),
    otherKey: file("other.key"),
    expired: file("expired.pem"),
    expiredKey: file("expired.key"),
    derCertificate: file("leaf.der"),
    derKey: file("leaf-key.der"),
  };
}
