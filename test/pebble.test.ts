// Self-test of the Pebble harness in pebble.ts: acme-client obtains certificates from it.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { X509Certificate } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import https from "node:https";
import { join } from "node:path";
import * as acme from "acme-client";
import { makeTempDir, run } from "./helpers.ts";
import { startPebble, type Pebble } from "./pebble.ts";

setDefaultTimeout(20_000);

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g;
const DAY_SECONDS = 24 * 60 * 60;

/** Serves HTTP-01 key authorizations on 127.0.0.1:port from `keyAuthorizations`, by token. */
function startChallengeServer(port: number, keyAuthorizations: Map<string, string>) {
  return Bun.serve({
    hostname: "127.0.0.1",
    port,
    fetch(request) {
      const token = new URL(request.url).pathname.replace("/.well-known/acme-challenge/", "");
      const keyAuthorization = keyAuthorizations.get(token);
      if (keyAuthorization === undefined) return new Response("unknown token\n", { status: 404 });
      return new Response(keyAuthorization);
    },
  });
}

/** Obtains a certificate for `name` from `pebble` over HTTP-01 and returns the PEM chain. */
async function obtainCertificate(
  pebble: Pebble,
  name: string,
  keyAuthorizations: Map<string, string>,
): Promise<string> {
  // acme-client sends every request through this shared axios instance.
  acme.axios.defaults.httpsAgent = new https.Agent({ ca: readFileSync(pebble.caFile) });
  const client = new acme.Client({
    directoryUrl: pebble.directoryUrl,
    accountKey: await acme.crypto.createPrivateKey(),
  });
  const [, csr] = await acme.crypto.createCsr({ commonName: name, altNames: [name] });
  return client.auto({
    csr,
    termsOfServiceAgreed: true,
    skipChallengeVerification: true,
    challengePriority: ["http-01"],
    challengeCreateFn: async (_authz, challenge, keyAuthorization) => {
      keyAuthorizations.set(challenge.token, keyAuthorization);
    },
    challengeRemoveFn: async (_authz, challenge) => {
      keyAuthorizations.delete(challenge.token);
    },
  });
}

function parseChain(pem: string): X509Certificate[] {
  return (pem.match(PEM_CERTIFICATE) ?? []).map((block) => new X509Certificate(block));
}

function lifetimeSeconds(certificate: X509Certificate): number {
  return (Date.parse(certificate.validTo) - Date.parse(certificate.validFrom)) / 1000;
}

describe("startPebble", () => {
  let pebble: Pebble;
  let challengeServer: ReturnType<typeof Bun.serve>;
  const keyAuthorizations = new Map<string, string>();

  beforeAll(async () => {
    pebble = await startPebble({ validitySeconds: 30 });
    challengeServer = startChallengeServer(pebble.httpPort, keyAuthorizations);
  });

  afterAll(async () => {
    challengeServer?.stop(true);
    await pebble?.stop();
  });

  test("issued chain verifies against rootPem", async () => {
    const ordersBefore = pebble.orderCount();
    const issuedBefore = pebble.issuedCount();
    const pem = await obtainCertificate(pebble, "a.test", keyAuthorizations);

    const chain = parseChain(pem);
    expect(chain).toHaveLength(2);
    const [leaf, intermediate] = chain as [X509Certificate, X509Certificate];
    const root = new X509Certificate(await pebble.rootPem());
    expect(leaf.subjectAltName).toBe("DNS:a.test");
    expect(leaf.verify(intermediate.publicKey)).toBe(true);
    expect(intermediate.verify(root.publicKey)).toBe(true);
    expect(intermediate.checkIssued(root)).toBe(true);
    expect(root.verify(root.publicKey)).toBe(true);

    const folder = makeTempDir("pebble-chain");
    const leafFile = join(folder, "leaf.pem");
    const intermediateFile = join(folder, "intermediate.pem");
    writeFileSync(leafFile, leaf.toString());
    writeFileSync(intermediateFile, intermediate.toString());
    const verify = await run([
      "openssl",
      "verify",
      "-CAfile",
      pebble.rootFile(),
      "-untrusted",
      intermediateFile,
      leafFile,
    ]);
    expect(verify.stderr).toBe("");
    expect(verify.exitCode).toBe(0);

    expect(pebble.orderCount()).toBe(ordersBefore + 1);
    expect(pebble.issuedCount()).toBe(issuedBefore + 1);
  });

  test("validitySeconds sets certificate lifetime", async () => {
    const [leaf] = parseChain(await obtainCertificate(pebble, "short.test", keyAuthorizations));
    // Pebble 2.4.0 set notAfter 29 s after notBefore for a 30 s period when this was written.
    expect(lifetimeSeconds(leaf!)).toBeGreaterThanOrEqual(28);
    expect(lifetimeSeconds(leaf!)).toBeLessThanOrEqual(31);
  });

  test("pointName makes HTTP-01 fail", async () => {
    const ordersBefore = pebble.orderCount();
    const issuedBefore = pebble.issuedCount();
    await pebble.pointName("b.test", "127.0.0.2");
    try {
      const refused = new RegExp(`127\\.0\\.0\\.2:${pebble.httpPort}: connect: connection refused`);
      await expect(obtainCertificate(pebble, "b.test", keyAuthorizations)).rejects.toThrow(refused);
    } finally {
      await pebble.resetName("b.test");
    }
    expect(pebble.orderCount()).toBe(ordersBefore + 1);
    expect(pebble.issuedCount()).toBe(issuedBefore);

    const [leaf] = parseChain(await obtainCertificate(pebble, "b.test", keyAuthorizations));
    expect(leaf!.subjectAltName).toBe("DNS:b.test");
  });

  test("pointName rejects non-loopback address", async () => {
    await expect(pebble.pointName("c.test", "192.0.2.1")).rejects.toThrow(/not an IPv4 loopback/);
  });

  test("second instance runs alongside", async () => {
    const second = await startPebble();
    const secondKeyAuthorizations = new Map<string, string>();
    const secondServer = startChallengeServer(second.httpPort, secondKeyAuthorizations);
    try {
      expect(second.directoryUrl).not.toBe(pebble.directoryUrl);
      expect(second.httpPort).not.toBe(pebble.httpPort);
      expect(second.tlsPort).not.toBe(pebble.tlsPort);
      expect(await second.rootPem()).not.toBe(await pebble.rootPem());

      const ordersBefore = pebble.orderCount();
      const pem = await obtainCertificate(second, "a.test", secondKeyAuthorizations);
      const [leaf] = parseChain(pem);
      // Without validitySeconds, Pebble 2.4.0 issues certificates for about five years.
      expect(lifetimeSeconds(leaf!)).toBeGreaterThan(365 * DAY_SECONDS);
      expect(second.orderCount()).toBe(1);
      expect(pebble.orderCount()).toBe(ordersBefore);
    } finally {
      secondServer.stop(true);
      await second.stop();
    }

    await second.stop();
    const afterStop = fetch(second.directoryUrl, { tls: { ca: readFileSync(second.caFile) } });
    await expect(afterStop).rejects.toThrow();
    expect(
      (await fetch(pebble.directoryUrl, { tls: { ca: readFileSync(pebble.caFile) } })).ok,
    ).toBe(true);
  });
});
