import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { webcrypto } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { computeCertId, fetchRenewalWindow } from "../src/ari.ts";
import { createSelfSignedCertificate } from "../src/certs.ts";
import { pickTimeInWindow } from "../src/renewal.ts";
import { makeTempDir } from "./helpers.ts";

/** Creates a certificate with the given serial and Authority Key Identifier (both hex). */
async function createCertificate(serialNumber: string, authorityKeyId: string): Promise<string> {
  const algorithm = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const keys = await webcrypto.subtle.generateKey(algorithm, true, ["sign", "verify"]);
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber,
      name: "CN=ari.test",
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 86_400_000),
      keys,
      signingAlgorithm: algorithm,
      extensions: [new x509.AuthorityKeyIdentifierExtension(authorityKeyId)],
    },
    webcrypto as Crypto,
  );
  return cert.toString("pem");
}

describe("computeCertId", () => {
  test("matches the RFC 9773 example", async () => {
    // RFC 9773 section 4.1: this keyIdentifier and serial give "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE".
    const pem = await createCertificate("0087654321", "69885b6b87464041e1b37b847ba0ae2cde01c8d4");

    expect(computeCertId(pem)).toBe("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
  });

  test("keeps a serial without a sign byte", async () => {
    const pem = await createCertificate(
      "79cb04b59186586f",
      "038608fa8a93eba013fb05ec7bda03b929fec497",
    );

    expect(computeCertId(pem)).toBe("A4YI-oqT66AT-wXse9oDuSn-xJc.ecsEtZGGWG8");
  });
});

describe("pickTimeInWindow", () => {
  const window = { start: new Date("2027-01-01T00:00:00Z"), end: new Date("2027-01-03T00:00:00Z") };

  test.each([
    [0, "2027-01-01T00:00:00.000Z"],
    [0.5, "2027-01-02T00:00:00.000Z"],
    [0.999999, "2027-01-02T23:59:59.827Z"],
  ])("maps %p into the window", (random, expected) => {
    const time = pickTimeInWindow(window, random);

    expect(new Date(time).toISOString()).toBe(expected);
  });
});

describe("fetchRenewalWindow", () => {
  let server: ReturnType<typeof Bun.serve>;
  let caFile: string;
  const requested: string[] = [];
  let offerRenewalInfo = true;

  beforeAll(async () => {
    const pair = await createSelfSignedCertificate(["127.0.0.1"]);
    caFile = join(makeTempDir("ari"), "ca.pem");
    writeFileSync(caFile, pair.cert);
    // A stand-in for a CA's directory and renewalInfo resources: Pebble 2.4 offers no ARI.
    server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: pair.cert, key: pair.key },
      fetch(req) {
        const path = new URL(req.url).pathname;
        requested.push(path);
        if (path === "/dir") {
          const origin = `https://127.0.0.1:${server.port}`;
          return Response.json(offerRenewalInfo ? { renewalInfo: `${origin}/renewal-info` } : {});
        }
        return Response.json({
          suggestedWindow: { start: "2027-02-01T00:00:00Z", end: "2027-02-02T00:00:00Z" },
        });
      },
    });
  });

  afterAll(() => server.stop(true));

  test("reads the suggested window", async () => {
    const pem = await createCertificate("0087654321", "69885b6b87464041e1b37b847ba0ae2cde01c8d4");
    const settings = {
      directoryUrl: `https://127.0.0.1:${server.port}/dir`,
      email: undefined,
      caFile,
    };

    const window = await fetchRenewalWindow(settings, pem);

    expect(requested).toContain("/renewal-info/aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
    expect(window?.start.toISOString()).toBe("2027-02-01T00:00:00.000Z");
    expect(window?.end.toISOString()).toBe("2027-02-02T00:00:00.000Z");
  });

  test("returns nothing without renewalInfo", async () => {
    offerRenewalInfo = false;
    const pem = await createCertificate("0087654321", "69885b6b87464041e1b37b847ba0ae2cde01c8d4");
    const settings = {
      directoryUrl: `https://127.0.0.1:${server.port}/dir`,
      email: undefined,
      caFile,
    };

    const window = await fetchRenewalWindow(settings, pem);

    expect(window).toBeUndefined();
  });
});
