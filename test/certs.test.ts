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
import { hostname } from "node:os";
import { join } from "node:path";
import {
  createSelfSignedCertificate,
  ensureSelfSignedCertificate,
  loadCertificateFiles,
} from "../src/certs.ts";
import { UserError } from "../src/errors.ts";
import {
  type Fixtures,
  makeFixtures,
  openssl,
  opensslAltNames,
  opensslFingerprint,
  opensslValidity,
  writeEcKey,
} from "./openssl.ts";

setDefaultTimeout(20_000);

const DAY_MS = 24 * 60 * 60 * 1000;

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

let fixtures: Fixtures;

beforeAll(async () => {
  fixtures = await makeFixtures("certs-unit", { expiredIssuer: "self" });
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
