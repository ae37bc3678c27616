import { describe, expect, test } from "bun:test";
import { ChallengeStore, notFoundHandler, withHttpChallenges } from "../src/challenges.ts";

function fallback(req: Request): Response {
  return new Response(`fallback for ${req.url}`, { status: 301 });
}

describe("withHttpChallenges", () => {
  test("returns a stored key authorization", async () => {
    const store = new ChallengeStore();
    store.httpTokens.set("token-1", "token-1.thumbprint");
    const handler = withHttpChallenges(store, fallback);

    const res = handler(new Request("http://a.test/.well-known/acme-challenge/token-1"));

    expect(res.status).toBe(200);
    expect(await res.text()).toBe("token-1.thumbprint");
  });

  test("returns 404 for an unknown token", async () => {
    const handler = withHttpChallenges(new ChallengeStore(), fallback);

    const res = handler(new Request("http://a.test/.well-known/acme-challenge/other"));

    expect(res.status).toBe(404);
    expect(await res.text()).toBe("Not Found: no such ACME challenge\n");
  });

  test("passes other paths on", async () => {
    const store = new ChallengeStore();
    store.httpTokens.set("token-1", "token-1.thumbprint");
    const handler = withHttpChallenges(store, fallback);

    const res = handler(new Request("http://a.test/token-1?x=/.well-known/acme-challenge/token-1"));

    expect(res.status).toBe(301);
    expect(await res.text()).toBe(
      "fallback for http://a.test/token-1?x=/.well-known/acme-challenge/token-1",
    );
  });
});

describe("notFoundHandler", () => {
  test("says the port serves only challenges", async () => {
    const res = notFoundHandler();

    expect(res.status).toBe(404);
    expect(await res.text()).toBe(
      "Not Found: this port serves only ACME challenges; use https://\n",
    );
  });
});
