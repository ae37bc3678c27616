import { describe, expect, test } from "bun:test";
import { checkRequestTarget, isServedHost, parseHost } from "../src/hostcheck.ts";

const DOMAINS = ["example.com", "www.example.com"];
const PORT = 8443;

function request(host: string | undefined, method = "GET"): Request {
  const headers = host === undefined ? {} : { host };
  return new Request("https://127.0.0.1/p", { method, headers });
}

describe("parseHost", () => {
  test.each([
    ["example.com", "example.com", undefined],
    ["Example.COM.", "Example.COM.", undefined],
    ["example.com:8443", "example.com", "8443"],
    ["example.com:", "example.com", undefined],
    ["127.0.0.1", "127.0.0.1", undefined],
    ["127.0.0.1:443", "127.0.0.1", "443"],
    ["[::1]", "[::1]", undefined],
    ["[::1]:8443", "[::1]", "8443"],
    ["my_app.local", "my_app.local", undefined],
    ["xn--bcher-kva.example", "xn--bcher-kva.example", undefined],
    ["a%41b", "a%41b", undefined],
  ])("accepts %p", (value, name, port) => {
    expect(parseHost(value)).toEqual({ name, port });
  });

  test.each([
    "",
    "a b",
    "127.0.0.1/evil",
    "user@127.0.0.1",
    "a?b",
    "a#b",
    "a\\b",
    "a:xyz",
    "a:1:2",
    "a, b",
    "a%2",
    "[::1",
    "[evil.example]",
    "\u00e9.example",
    "a\tb",
    "927.0.0.1",
    ".0.1",
    "127&0.0.1",
    "a:65536",
  ])("rejects %p", (value) => {
    expect(parseHost(value)).toBeUndefined();
  });
});

describe("isServedHost", () => {
  test.each([
    "example.com",
    "EXAMPLE.com",
    "example.com.",
    "www.example.com",
    "example.com:8443",
    "Example.Com.:8443",
  ])("serves %p", (value) => {
    expect(isServedHost(parseHost(value)!, DOMAINS, PORT)).toBe(true);
  });

  test.each([
    "evil.example",
    "sub.example.com",
    "example.com..",
    "example.com:443",
    "example.com:18443",
    "127.0.0.1",
    "[::1]",
    "localhost",
  ])("does not serve %p", (value) => {
    expect(isServedHost(parseHost(value)!, DOMAINS, PORT)).toBe(false);
  });
});

describe("checkRequestTarget", () => {
  test("passes any valid Host without domains", () => {
    const res = checkRequestTarget(request("anything.example:1"), [], PORT);

    expect(res).toBeUndefined();
  });

  test("passes served Host", () => {
    const res = checkRequestTarget(request("WWW.example.com:8443"), DOMAINS, PORT);

    expect(res).toBeUndefined();
  });

  test("returns 421 for other Host", async () => {
    const res = checkRequestTarget(request("evil.example"), DOMAINS, PORT);

    expect(res?.status).toBe(421);
    expect(await res?.text()).toMatch(/^Misdirected Request/);
  });

  test("returns 400 for missing Host", () => {
    const res = checkRequestTarget(request(undefined), [], PORT);

    expect(res?.status).toBe(400);
  });

  test("returns 400 for joined Host values", () => {
    const res = checkRequestTarget(request("example.com, evil.example"), DOMAINS, PORT);

    expect(res?.status).toBe(400);
  });

  test("returns 400 for Host with path", () => {
    const res = checkRequestTarget(request("example.com/evil"), DOMAINS, PORT);

    expect(res?.status).toBe(400);
  });

  test("returns 400 for CONNECT", async () => {
    const res = checkRequestTarget(request("example.com:443", "CONNECT"), [], PORT);

    expect(res?.status).toBe(400);
    expect(await res?.text()).toMatch(/CONNECT/);
  });
});
