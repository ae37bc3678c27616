import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import {
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { isIPv6 } from "node:net";
import { hostname } from "node:os";
import { join } from "node:path";
import {
  createSelfSignedCertificate,
  ensureSelfSignedCertificate,
  loadCertificateFiles,
} from "../src/certs.ts";
import { UserError } from "../src/errors.ts";
import { makeTempDir, run } from "./helpers.ts";

setDefaultTimeout(20_000);

const DAY_MS = 24 * 60 * 60 * 1000;

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
async function openssl(args: string[], stdin?: string): Promise<string> {
  const result = await run(["openssl", ...args], stdin === undefined ? {} : { stdin });
  if (result.exitCode !== 0) throw new Error(`openssl ${args.join(" ")} failed:\n${result.stderr}`);
  return result.stdout;
}

/** Returns the SHA-256 fingerprint of the first certificate in `pem`, as "AB CD ...". */
async function opensslFingerprint(pem: string): Promise<string> {
  const output = await openssl(["x509", "-noout", "-fingerprint", "-sha256"], pem);
  return output.trim().replace(/^.*=/, "").replaceAll(":", " ");
}

/** Returns the subjectAltName entries of a certificate as lower-case names and compressed IPv6. */
async function opensslAltNames(pem: string): Promise<string[]> {
  const output = await openssl(["x509", "-noout", "-ext", "subjectAltName"], pem);
  const entries = output.split("\n").slice(1).join("").trim().split(/,\s*/);
  return entries.map((entry) => {
    const name = entry.replace(/^(DNS|IP Address):/, "");
    return isIPv6(name) ? new URL(`http://[${name}]/`).hostname.slice(1, -1) : name.toLowerCase();
  });
}

/** Returns notBefore and notAfter of a certificate. */
async function opensslValidity(pem: string): Promise<{ notBefore: number; notAfter: number }> {
  const args = ["x509", "-noout", "-dateopt", "iso_8601", "-startdate", "-enddate"];
  const output = await openssl(args, pem);
  const notBefore = Date.parse(/notBefore=(.+)/.exec(output)![1]!);
  const notAfter = Date.parse(/notAfter=(.+)/.exec(output)![1]!);
  return { notBefore, notAfter };
}

/** Tells whether the private key in `keyPem` belongs to the certificate in `certPem`. */
async function keyMatchesCertificate(certPem: string, keyPem: string): Promise<boolean> {
  const fromCertificate = await openssl(["x509", "-noout", "-pubkey"], certPem);
  const fromKey = await openssl(["pkey", "-pubout"], keyPem);
  return fromCertificate === fromKey;
}

/** Returns the one file in `folder` that contains a PEM private key. */
function findKeyFile(folder: string): string {
  const keyFiles = readdirSync(folder)
    .map((name) => join(folder, name))
    .filter((path) => statSync(path).isFile())
    .filter((path) => readFileSync(path, "utf8").includes("PRIVATE KEY"));
  if (keyFiles.length !== 1) {
    throw new Error(`expected one key file in ${folder}, found: ${keyFiles.join(", ")}`);
  }
  return keyFiles[0]!;
}

/** Writes a new ECDSA P-256 private key to `path`. */
async function writeEcKey(path: string): Promise<void> {
  const curve = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
  await openssl(["genpkey", ...curve, "-out", path]);
}

/** Throwaway PKI: root CA -> intermediate -> leaf for localhost, plus broken variants. */
interface Fixtures {
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

async function makeFixtures(): Promise<Fixtures> {
  const folder = makeTempDir("certs-unit");
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

  // A self-signed certificate that expired in 2021, as a stored one left from an old run.
  await openssl(request("expired", "/CN=localhost"));
  await openssl([
    ...["ca", "-batch", "-notext", "-config", config, "-extensions", "leaf_ext", "-selfsign"],
    ...["-keyfile", file("expired.key"), "-in", file("expired.csr"), "-out", file("expired.pem")],
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

let fixtures: Fixtures;

beforeAll(async () => {
  fixtures = await makeFixtures();
});

afterAll(() => {
  rmSync(fixtures.folder, { recursive: true, force: true });
});

describe("loadCertificateFiles", () => {
  test("returns the leaf's fingerprint", async () => {
    const expected = await opensslFingerprint(readFileSync(fixtures.leaf, "utf8"));

    const bundle = await loadCertificateFiles(fixtures.chain, fixtures.leafKey);

    expect(bundle.fingerprint).toBe(expected);
  });

  test("keeps the intermediate in the chain", async () => {
    const bundle = await loadCertificateFiles(fixtures.chain, fixtures.leafKey);

    const blocks = bundle.cert.match(/-----BEGIN CERTIFICATE-----/g) ?? [];
    expect(blocks.length).toBe(2);
    expect(bundle.cert).toContain(readFileSync(fixtures.intermediate, "utf8").trim());
  });

  test("returns the leaf's names", async () => {
    const bundle = await loadCertificateFiles(fixtures.chain, fixtures.leafKey);

    expect(bundle.names.sort()).toEqual(["127.0.0.1", "localhost"]);
  });

  const rejected: {
    label: string;
    paths: () => [string, string];
    culprit: () => string;
    problem: RegExp;
  }[] = [
    {
      label: "a missing certificate file",
      paths: () => [join(fixtures.folder, "missing.pem"), fixtures.leafKey],
      culprit: () => join(fixtures.folder, "missing.pem"),
      problem: /no such file|not found|does not exist/i,
    },
    {
      label: "a missing key file",
      paths: () => [fixtures.chain, join(fixtures.folder, "missing.key")],
      culprit: () => join(fixtures.folder, "missing.key"),
      problem: /no such file|not found|does not exist/i,
    },
    {
      label: "a folder as certificate",
      paths: () => [fixtures.folder, fixtures.leafKey],
      culprit: () => fixtures.folder,
      problem: /folder|directory/i,
    },
    {
      label: "a DER certificate",
      paths: () => [fixtures.derCertificate, fixtures.leafKey],
      culprit: () => fixtures.derCertificate,
      problem: /PEM/,
    },
    {
      label: "a DER key",
      paths: () => [fixtures.chain, fixtures.derKey],
      culprit: () => fixtures.derKey,
      problem: /PEM/,
    },
    {
      label: "a key of another certificate",
      paths: () => [fixtures.chain, fixtures.otherKey],
      culprit: () => fixtures.otherKey,
      problem: /does not match/i,
    },
    {
      label: "an expired certificate",
      paths: () => [fixtures.expired, fixtures.expiredKey],
      culprit: () => fixtures.expired,
      problem: /expired/i,
    },
  ];

  test.each(rejected)("rejects $label", async ({ paths, culprit, problem }) => {
    const [certPath, keyPath] = paths();

    const error = await loadCertificateFiles(certPath, keyPath).catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(UserError);
    const message = (error as UserError).message;
    expect(message).toContain(culprit());
    expect(message).toMatch(problem);
    expect(message).not.toContain("\n");
  });
});

describe("createSelfSignedCertificate", () => {
  const names = ["127.0.0.1", "localhost", "::1", hostname().toLowerCase()];

  test("uses an ECDSA P-256 key", async () => {
    const { cert } = await createSelfSignedCertificate(names);

    const text = await openssl(["x509", "-noout", "-text"], cert);
    expect(text).toContain("Public Key Algorithm: id-ecPublicKey");
    expect(text).toContain("NIST CURVE: P-256");
  });

  test("is valid for one year", async () => {
    const { cert } = await createSelfSignedCertificate(names);

    const { notBefore, notAfter } = await opensslValidity(cert);
    expect(notBefore).toBeLessThanOrEqual(Date.now());
    expect(notAfter - notBefore).toBeGreaterThanOrEqual(365 * DAY_MS);
    expect(notAfter - notBefore).toBeLessThanOrEqual(366 * DAY_MS);
  });

  test("covers every given name", async () => {
    const { cert } = await createSelfSignedCertificate(names);

    expect((await opensslAltNames(cert)).sort()).toEqual([...names].sort());
  });

  test("returns the matching key", async () => {
    const { cert, key } = await createSelfSignedCertificate(names);

    expect(await keyMatchesCertificate(cert, key)).toBe(true);
  });
});

describe("ensureSelfSignedCertificate", () => {
  const names = ["127.0.0.1", "localhost", "::1"];

  test("writes the key with mode 0600", async () => {
    const folder = join(mkdtempSync(join(fixtures.folder, "store-")), "self-signed");

    await ensureSelfSignedCertificate(folder, names);

    expect(statSync(findKeyFile(folder)).mode & 0o777).toBe(0o600);
  });

  test("creates its folder with mode 0700", async () => {
    const folder = join(mkdtempSync(join(fixtures.folder, "store-")), "self-signed");

    await ensureSelfSignedCertificate(folder, names);

    expect(statSync(folder).mode & 0o777).toBe(0o700);
  });

  test("writes the certificate it returns", async () => {
    const folder = join(mkdtempSync(join(fixtures.folder, "store-")), "self-signed");

    const bundle = await ensureSelfSignedCertificate(folder, names);

    expect(readFileSync(bundle.certPath, "utf8")).toBe(bundle.cert);
    const storedKey = readFileSync(findKeyFile(folder), "utf8");
    expect(await keyMatchesCertificate(bundle.cert, storedKey)).toBe(true);
  });

  test("returns the fingerprint openssl computes", async () => {
    const folder = join(mkdtempSync(join(fixtures.folder, "store-")), "self-signed");

    const bundle = await ensureSelfSignedCertificate(folder, names);

    expect(bundle.fingerprint).toMatch(/^[0-9A-F]{2}( [0-9A-F]{2}){31}$/);
    expect(bundle.fingerprint).toBe(await opensslFingerprint(bundle.cert));
  });

  test("reuses a valid stored certificate", async () => {
    const folder = join(mkdtempSync(join(fixtures.folder, "store-")), "self-signed");
    const first = await ensureSelfSignedCertificate(folder, names);
    const keyPath = findKeyFile(folder);
    const past = new Date("2001-01-01T00:00:00Z");
    utimesSync(first.certPath, past, past);
    utimesSync(keyPath, past, past);
    const keyBefore = readFileSync(keyPath, "utf8");

    const second = await ensureSelfSignedCertificate(folder, names);

    expect(second.reused).toBe(true);
    expect(second.fingerprint).toBe(first.fingerprint);
    expect(readFileSync(second.certPath, "utf8")).toBe(first.cert);
    expect(readFileSync(keyPath, "utf8")).toBe(keyBefore);
    expect(statSync(second.certPath).mtimeMs).toBe(past.getTime());
  });

  test("replaces an expired stored certificate", async () => {
    const folder = join(mkdtempSync(join(fixtures.folder, "store-")), "self-signed");
    const first = await ensureSelfSignedCertificate(folder, ["localhost"]);
    const expiredPem = readFileSync(fixtures.expired, "utf8");
    writeFileSync(first.certPath, expiredPem);
    writeFileSync(findKeyFile(folder), readFileSync(fixtures.expiredKey, "utf8"));

    const second = await ensureSelfSignedCertificate(folder, ["localhost"]);

    expect(second.reused).toBe(false);
    const stored = readFileSync(second.certPath, "utf8");
    expect(stored).not.toBe(expiredPem);
    expect((await opensslValidity(stored)).notAfter).toBeGreaterThan(Date.now() + 300 * DAY_MS);
    const storedKey = readFileSync(findKeyFile(folder), "utf8");
    expect(await keyMatchesCertificate(stored, storedKey)).toBe(true);
  });

  test("replaces a mismatched stored key", async () => {
    const folder = join(mkdtempSync(join(fixtures.folder, "store-")), "self-signed");
    const first = await ensureSelfSignedCertificate(folder, names);
    const keyPath = findKeyFile(folder);
    await writeEcKey(keyPath);

    const second = await ensureSelfSignedCertificate(folder, names);

    expect(second.reused).toBe(false);
    expect(second.fingerprint).not.toBe(first.fingerprint);
    const stored = readFileSync(second.certPath, "utf8");
    const storedKey = readFileSync(findKeyFile(folder), "utf8");
    expect(await keyMatchesCertificate(stored, storedKey)).toBe(true);
  });

  test("replaces a certificate lacking a name", async () => {
    const folder = join(mkdtempSync(join(fixtures.folder, "store-")), "self-signed");
    await ensureSelfSignedCertificate(folder, names);

    const second = await ensureSelfSignedCertificate(folder, [...names, "127.0.0.2"]);

    expect(second.reused).toBe(false);
    expect(await opensslAltNames(readFileSync(second.certPath, "utf8"))).toContain("127.0.0.2");
  });
});
