import { describe, expect, test } from "bun:test";
import type { Upstream } from "../src/config.ts";
import {
  hasListOption,
  HOP_BY_HOP_HEADERS,
  forEachForwardedHeader,
  isWebSocketUpgrade,
  stripHopByHopHeaders,
  type ClientConnection,
} from "../src/headers.ts";
import { joinUpstreamURL, requestTarget } from "../src/proxy.ts";

const ORIGIN = "http://127.0.0.1:5000";

function upstream(basePath = "", baseQuery = ""): Upstream {
  return { origin: ORIGIN, basePath, baseQuery };
}

describe("requestTarget", () => {
  test("keeps origin-form target", () => {
    const target = requestTarget("/a%2Fb//c/../d?x=%2F&y=1");

    expect(target).toBe("/a%2Fb//c/../d?x=%2F&y=1");
  });

  test("strips scheme and authority", () => {
    const target = requestTarget("https://127.0.0.1:4430/a%2Fb//c/../d?x=%2F&y=1");

    expect(target).toBe("/a%2Fb//c/../d?x=%2F&y=1");
  });

  test("keeps leading double slash", () => {
    const target = requestTarget("https://127.0.0.1:4430//x/./y");

    expect(target).toBe("//x/./y");
  });

  test("strips IPv6 authority", () => {
    const target = requestTarget("https://[::1]:4430/p?q=1");

    expect(target).toBe("/p?q=1");
  });

  test("returns slash without path", () => {
    const target = requestTarget("https://127.0.0.1:4430");

    expect(target).toBe("/");
  });
});

describe("joinUpstreamURL", () => {
  test("uses target without base path", () => {
    const url = joinUpstreamURL(upstream(), "/x?b=2");

    expect(url).toBe(`${ORIGIN}/x?b=2`);
  });

  test.each([
    ["/app", "/x", "/app/x"],
    ["/app/", "/x", "/app/x"],
    ["/app", "x", "/app/x"],
    ["/app/", "x", "/app/x"],
    ["/app", "/", "/app/"],
    ["/app/", "/", "/app/"],
  ])("joins %p and %p with one slash", (basePath, target, expected) => {
    const url = joinUpstreamURL(upstream(basePath), target);

    expect(url).toBe(`${ORIGIN}${expected}`);
  });

  test("merges base and request queries", () => {
    const url = joinUpstreamURL(upstream("/base", "a=1"), "/x?b=2");

    expect(url).toBe(`${ORIGIN}/base/x?a=1&b=2`);
  });

  test("keeps base query alone", () => {
    const url = joinUpstreamURL(upstream("/base", "a=1"), "/x");

    expect(url).toBe(`${ORIGIN}/base/x?a=1`);
  });

  test("keeps base query without path", () => {
    const url = joinUpstreamURL(upstream("", "a=1"), "/x?b=2");

    expect(url).toBe(`${ORIGIN}/x?a=1&b=2`);
  });

  test("keeps raw path and query", () => {
    const url = joinUpstreamURL(upstream("/app"), "/a%2Fb//c/../d?x=%2F&y=1");

    expect(url).toBe(`${ORIGIN}/app/a%2Fb//c/../d?x=%2F&y=1`);
  });

  test("keeps client double slash", () => {
    const url = joinUpstreamURL(upstream(), "//x//y");

    expect(url).toBe(`${ORIGIN}//x//y`);
  });

  test("keeps question mark in query", () => {
    const url = joinUpstreamURL(upstream("", "a=1"), "/x?b=?&c=%3F");

    expect(url).toBe(`${ORIGIN}/x?a=1&b=?&c=%3F`);
  });
});

describe("stripHopByHopHeaders", () => {
  test("removes every hop-by-hop header", () => {
    const headers = new Headers();
    for (const name of HOP_BY_HOP_HEADERS) headers.set(name, "1");
    headers.set("x-kept", "yes");

    stripHopByHopHeaders(headers);

    expect([...headers.keys()]).toEqual(["x-kept"]);
  });

  test("skips Connection options that are not tokens", () => {
    const headers = new Headers({ connection: "U\u00ebpgrade, a b, x-secret", "x-secret": "1" });
    headers.set("x-kept", "yes");

    stripHopByHopHeaders(headers);

    expect([...headers.keys()]).toEqual(["x-kept"]);
  });

  test("lists RFC 9110 hop-by-hop headers", () => {
    const names: readonly string[] = HOP_BY_HOP_HEADERS;

    const expected = [
      "connection",
      "proxy-connection",
      "keep-alive",
      "te",
      "transfer-encoding",
      "upgrade",
      "trailer",
    ];

    for (const name of expected) expect(names).toContain(name);
  });

  test("removes headers named in Connection", () => {
    const headers = new Headers({
      connection: "X-Secret ,x-other,, keep-alive",
      "x-secret": "1",
      "x-other": "2",
      "x-kept": "yes",
    });

    stripHopByHopHeaders(headers);

    expect([...headers.keys()]).toEqual(["x-kept"]);
  });

  test("reads every Connection header line", () => {
    const headers = new Headers([
      ["connection", "x-first"],
      ["connection", "x-second"],
      ["x-first", "1"],
      ["x-second", "2"],
    ]);

    stripHopByHopHeaders(headers);

    expect([...headers.keys()]).toEqual([]);
  });

  test("keeps end-to-end headers", () => {
    const headers = new Headers({
      "content-type": "text/plain",
      "set-cookie": "a=1",
      "x-custom": "v",
    });

    stripHopByHopHeaders(headers);

    expect(headers.get("content-type")).toBe("text/plain");
    expect(headers.getSetCookie()).toEqual(["a=1"]);
    expect(headers.get("x-custom")).toBe("v");
  });

  test("keeps every Set-Cookie value", () => {
    const headers = new Headers([
      ["set-cookie", "a=1"],
      ["set-cookie", "b=2"],
      ["set-cookie", "c=3"],
      ["connection", "x-secret"],
    ]);

    stripHopByHopHeaders(headers);

    expect(headers.getSetCookie()).toEqual(["a=1", "b=2", "c=3"]);
  });
});

/** Returns the headers that forEachForwardedHeader produces, as name and value pairs. */
function forwarded(headers: Headers, host: string, client: ClientConnection): string[][] {
  const pairs: string[][] = [];
  forEachForwardedHeader(headers, host, client, (name, value) => pairs.push([name, value]));
  return pairs;
}

describe("forEachForwardedHeader", () => {
  const client = { address: "127.0.0.1", localPort: 4430 };
  const value = (pairs: string[][], name: string) =>
    pairs.filter(([key]) => key === name).map(([, text]) => text);

  test("appends client to X-Forwarded-For", () => {
    const headers = new Headers({ "x-forwarded-for": "10.1.2.3" });

    const pairs = forwarded(headers, "app.example", client);

    expect(value(pairs, "x-forwarded-for")).toEqual(["10.1.2.3, 127.0.0.1"]);
  });

  test("starts X-Forwarded-For with client", () => {
    const pairs = forwarded(new Headers(), "app.example", client);

    expect(value(pairs, "x-forwarded-for")).toEqual(["127.0.0.1"]);
  });

  test("keeps X-Forwarded-For without address", () => {
    const headers = new Headers({ "x-forwarded-for": "10.1.2.3" });

    const pairs = forwarded(headers, "app.example", { address: undefined, localPort: 4430 });

    expect(value(pairs, "x-forwarded-for")).toEqual(["10.1.2.3"]);
  });

  test("sets proto, host and port", () => {
    const pairs = forwarded(new Headers(), "app.example:8443", client);

    expect(value(pairs, "x-forwarded-proto")).toEqual(["https"]);
    expect(value(pairs, "x-forwarded-host")).toEqual(["app.example:8443"]);
    expect(value(pairs, "x-forwarded-port")).toEqual(["4430"]);
  });

  test("replaces client-sent proto, host and port", () => {
    const headers = new Headers({
      "x-forwarded-proto": "http",
      "x-forwarded-host": "evil.example",
      "x-forwarded-port": "1",
    });

    const pairs = forwarded(headers, "app.example", client);

    expect(value(pairs, "x-forwarded-proto")).toEqual(["https"]);
    expect(value(pairs, "x-forwarded-host")).toEqual(["app.example"]);
    expect(value(pairs, "x-forwarded-port")).toEqual(["4430"]);
  });

  test("drops hop-by-hop headers and Expect", () => {
    const headers = new Headers({ expect: "100-continue", "x-kept": "yes" });
    for (const name of HOP_BY_HOP_HEADERS) headers.set(name, "1");

    const names = forwarded(headers, "app.example", client).map(([name]) => name);

    expect(names).toEqual([
      "x-kept",
      "x-forwarded-for",
      "x-forwarded-proto",
      "x-forwarded-host",
      "x-forwarded-port",
    ]);
  });

  test("drops headers named in Connection", () => {
    const headers = new Headers({
      connection: "X-Secret ,x-other,, keep-alive, X-Forwarded-For",
      "x-secret": "1",
      "x-other": "2",
      "x-forwarded-for": "10.1.2.3",
      host: "app.example",
    });

    const pairs = forwarded(headers, "app.example", client);

    expect(pairs.slice(0, 2)).toEqual([
      ["host", "app.example"],
      ["x-forwarded-for", "127.0.0.1"],
    ]);
  });

  test("keeps one of two equal Content-Lengths", () => {
    // Bun.serve passes two "Content-Length: 3" lines on as "3, 3".
    const headers = new Headers({ "content-length": "3, 3" });

    const pairs = forwarded(headers, "app.example", client);

    expect(value(pairs, "content-length")).toEqual(["3"]);
  });
});

describe("hasListOption", () => {
  test.each([
    ["keep-alive, Close", true],
    ["close", true],
    [" upgrade ,close ", true],
    ["closed", false],
    ["keep-alive", false],
    ["", false],
  ])("finds close in %p: %p", (value, expected) => {
    expect(hasListOption(value, "close")).toBe(expected);
  });

  test("finds nothing in a missing header", () => {
    expect(hasListOption(null, "close")).toBe(false);
  });
});

describe("isWebSocketUpgrade", () => {
  const handshake = {
    upgrade: "websocket",
    connection: "keep-alive, Upgrade",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    "sec-websocket-version": "13",
  };

  test("accepts an opening handshake", () => {
    const req = new Request("https://a.test/ws", { headers: handshake });

    expect(isWebSocketUpgrade(req)).toBe(true);
  });

  test.each([
    ["a POST", { method: "POST", headers: handshake }],
    ["no Sec-WebSocket-Key", { headers: { upgrade: "websocket", connection: "upgrade" } }],
    ["no Connection: upgrade", { headers: { ...handshake, connection: "keep-alive" } }],
    ["another protocol", { headers: { ...handshake, upgrade: "h2c" } }],
  ])("rejects %s", (_, init) => {
    const req = new Request("https://a.test/ws", init);

    expect(isWebSocketUpgrade(req)).toBe(false);
  });
});
