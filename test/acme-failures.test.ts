// ACME failures that Pebble cannot produce: an unreachable ACME server, and a rate limit from
// a stand-in CA that answers every account request with RFC 8555's rateLimited problem.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createSelfSignedCertificate } from "../src/certs.ts";
import { findFreePort, makeTempDir, PROXY_COMMANDS, runToExit } from "./helpers.ts";

let fakeCA: ReturnType<typeof Bun.serve>;
let caFile: string;
const RATE_LIMIT_DETAIL = "too many certificates already issued for this exact set of names";

beforeAll(async () => {
  const pair = await createSelfSignedCertificate(["127.0.0.1"]);
  caFile = join(makeTempDir("fake-ca"), "ca.pem");
  writeFileSync(caFile, pair.cert);
  fakeCA = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: pair.cert, key: pair.key },
    fetch(req) {
      const origin = `https://127.0.0.1:${fakeCA.port}`;
      const path = new URL(req.url).pathname;
      if (path === "/dir") {
        return Response.json({
          newNonce: `${origin}/nonce`,
          newAccount: `${origin}/account`,
          newOrder: `${origin}/order`,
        });
      }
      const headers = { "replay-nonce": crypto.randomUUID().replaceAll("-", "") };
      if (path === "/nonce") return new Response(null, { status: 200, headers });
      return Response.json(
        { type: "urn:ietf:params:acme:error:rateLimited", detail: RATE_LIMIT_DETAIL, status: 429 },
        {
          status: 429,
          headers: {
            ...headers,
            "content-type": "application/problem+json",
            "retry-after": "3600",
          },
        },
      );
    },
  });
});

afterAll(() => fakeCA.stop(true));

function acmeArgs(directoryUrl: string): string[] {
  return [
    ...["-from", "127.0.0.1:0", "-httpFrom", "127.0.0.1:0", "-domain", "a.test"],
    ...["-acmeDirectory", directoryUrl, "-acmeCA", caFile, "-dataDir", makeTempDir("data")],
    ...["-to", "127.0.0.1:1"],
  ];
}

describe.each(PROXY_COMMANDS)("ACME failures ($name)", (command) => {
  test("reports a rate limit with its retry time", async () => {
    const started = Date.now();

    const result = await runToExit(command, acmeArgs(`https://127.0.0.1:${fakeCA.port}/dir`));

    expect(result.exitCode).toBe(1);
    const message = result.stderr.trim().split("\n").at(-1)!;
    expect(message).toContain("a.test: rate limited by the CA");
    expect(message).toContain(RATE_LIMIT_DETAIL);
    const retry = /retry after (\S+)\)/.exec(message)?.[1];
    const retryAt = Date.parse(retry ?? "");
    expect(retryAt - started).toBeGreaterThan(3_590_000);
    expect(retryAt - started).toBeLessThan(3_700_000);
  });

  test("reports an unreachable ACME server", async () => {
    const port = await findFreePort();

    const result = await runToExit(command, acmeArgs(`https://127.0.0.1:${port}/dir`));

    expect(result.exitCode).toBe(1);
    expect(result.stderr.trim().split("\n").at(-1)).toBe(
      `ssl-proxy: a.test: cannot reach the ACME server https://127.0.0.1:${port}/dir: ECONNREFUSED (check -acmeDirectory and the network)`,
    );
  });
});
