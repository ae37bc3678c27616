import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { join } from "node:path";
import type { TLSSocket } from "node:tls";
import { gzipSync } from "node:zlib";
import {
  PROXY_COMMANDS,
  findFreePort,
  makeTempDir,
  openTls,
  run,
  startFlask,
  startProxy,
  startRawBackend,
  type ProxyProcess,
  type RawRequest,
} from "./helpers.ts";

// A Bun.serve front end closes a connection after 10 s without traffic by default, so a
// backend must stay quiet for longer than that to show whether the proxy turned it off.
const BEYOND_IDLE_TIMEOUT_MS = 12_500;

// ssl-proxy sends a path that starts with "//" through node:http and every other path through
// fetch, so tests of behaviour that either client could break run with one path of each kind.
const CLIENT_PATHS = ["/p", "//p"];

/** How long a streaming test waits for one piece to pass through before it gives up. */
const PIECE_WAIT_MS = 5_000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const cleanups: (() => unknown)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Starts ssl-proxy for the current test and stops it after the test. */
async function launchProxy(command: { argv: string[] }, args: string[]): Promise<ProxyProcess> {
  const proxy = await startProxy(command, args);
  cleanups.push(() => proxy.stop());
  return proxy;
}

/** Starts a raw-socket backend for the current test and closes it after the test. */
async function launchRawBackend(respond?: (request: RawRequest) => string | Buffer) {
  const backend = await startRawBackend(respond);
  cleanups.push(() => backend.close());
  return { ...backend, url: `http://127.0.0.1:${backend.port}` };
}

/**
 * Starts a Bun.serve backend on a free port of 127.0.0.1. Its idle timeout is 60 s, so that
 * the backend itself never cuts a slow response.
 */
function startBunBackend(fetch: (req: Request) => Response | Promise<Response>) {
  const server = Bun.serve({ hostname: "127.0.0.1", port: 0, idleTimeout: 60, fetch });
  return { url: `http://127.0.0.1:${server.port}`, stop: () => server.stop(true) };
}

/** Starts a Bun.serve backend for the current test and stops it after the test. */
function launchBunBackend(fetch: (req: Request) => Response | Promise<Response>) {
  const backend = startBunBackend(fetch);
  cleanups.push(() => backend.stop());
  return backend;
}

/** Starts a TCP backend that hands each connection to `onConnection` and never speaks HTTP. */
async function launchSocketBackend(onConnection: (socket: Socket) => void) {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    onConnection(socket);
  });
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  cleanups.push(() => {
    for (const socket of sockets) socket.destroy();
    server.close();
  });
  const port = (server.address() as { port: number }).port;
  return { url: `http://127.0.0.1:${port}`, sockets };
}

/**
 * Builds a raw HTTP/1.1 response from a status such as "200 OK" and header lines. A body gets
 * a Content-Length header, and leaving the body out sends the head alone.
 */
function httpResponse(status: string, headers: string[], body?: string | Buffer): Buffer {
  const lines = [`HTTP/1.1 ${status}`, ...headers];
  if (body !== undefined) lines.push(`Content-Length: ${Buffer.byteLength(body)}`);
  const head = Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1");
  return Buffer.concat([head, Buffer.from(body ?? "")]);
}

/** An HTTP response as the client received it. */
interface Reply {
  status: number;
  /** Header lines in order, as [name, value] with the name's case kept. */
  headers: [string, string][];
  body: string;
}

/** Returns every value of header `name`, one per header line, in order. */
function headerValues(headers: [string, string][], name: string): string[] {
  const lowerName = name.toLowerCase();
  return headers.filter(([key]) => key.toLowerCase() === lowerName).map(([, value]) => value);
}

/** Returns the one request a backend received, failing the test if it got none or several. */
function onlyRequest(backend: { requests: RawRequest[] }): RawRequest {
  expect(backend.requests).toHaveLength(1);
  return backend.requests[0]!;
}

/** Returns every value of header `name` in the one request that the backend received. */
function receivedValues(backend: { requests: RawRequest[] }, name: string): string[] {
  return headerValues(onlyRequest(backend).headers, name);
}

/** Splits a response head ("HTTP/1.1 200 OK" and header lines) into status and headers. */
function parseHead(head: string): { status: number; headers: [string, string][] } {
  const [statusLine, ...lines] = head.split("\r\n");
  const headers = lines.map((line) => {
    const colon = line.indexOf(":");
    return [line.slice(0, colon), line.slice(colon + 1).trim()] as [string, string];
  });
  return { status: Number(statusLine!.split(" ")[1]), headers };
}

/**
 * Runs curl over HTTP/1.1 against `url` and parses what -D - printed. Interim 1xx responses are
 * skipped. Throws with curl's message when it gets no complete response, as for an empty reply.
 */
async function curl(url: string, args: string[] = []): Promise<Reply> {
  const argv = ["curl", "-sSk", "--http1.1", "--noproxy", "*", "-D", "-", ...args, url];
  const result = await run(argv);
  if (result.exitCode !== 0) {
    throw new Error(`curl ${url} failed with exit code ${result.exitCode}: ${result.stderr}`);
  }
  let rest = result.stdout;
  for (;;) {
    const end = rest.indexOf("\r\n\r\n");
    const head = parseHead(rest.slice(0, end));
    rest = rest.slice(end + 4);
    if (head.status >= 200) return { ...head, body: rest };
  }
}

/** Returns `-H` arguments for curl, one pair per header line. */
function headerArgs(lines: string[]): string[] {
  return lines.flatMap((line) => ["-H", line]);
}

/** Returns the HTTPS URL of `target` (a path and query) on the proxy. */
function proxyURL(proxy: ProxyProcess, target: string): string {
  return `https://127.0.0.1:${proxy.port}${target}`;
}

/** Collects everything the server sends on `socket` until it closes the connection. */
function readUntilClose(socket: TLSSocket, timeoutMs = 20_000): Promise<string> {
  let text = "";
  socket.on("data", (chunk: Buffer) => {
    text += chunk.toString("latin1");
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      const message = `the proxy kept the connection open for ${timeoutMs} ms; received:\n${text}`;
      reject(new Error(message));
    }, timeoutMs);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(text);
    });
    socket.on("error", () => {});
  });
}

/** Parses a raw HTTP/1.1 response that ends when the connection closes, decoding chunks. */
function parseRawReply(text: string): Reply {
  const end = text.indexOf("\r\n\r\n");
  const head = parseHead(text.slice(0, end));
  let body = text.slice(end + 4);
  const framing = headerValues(head.headers, "transfer-encoding").join(",").toLowerCase();
  if (framing.includes("chunked")) {
    let decoded = "";
    let offset = 0;
    for (;;) {
      const lineEnd = body.indexOf("\r\n", offset);
      const size = parseInt(body.slice(offset, lineEnd), 16);
      if (!(size > 0)) break;
      decoded += body.slice(lineEnd + 2, lineEnd + 2 + size);
      offset = lineEnd + 2 + size + 2;
    }
    body = decoded;
  }
  return { ...head, body };
}

/** Sends `request` over one TLS connection and returns the response the proxy sent back. */
async function sendOverTls(port: number, request: string): Promise<Reply> {
  const socket = await openTls(port);
  const received = readUntilClose(socket);
  socket.write(request);
  return parseRawReply(await received);
}

/** Frames `text` as one chunk of a chunked body. */
function chunk(text: string): string {
  return `${Buffer.byteLength(text).toString(16)}\r\n${text}\r\n`;
}

/** Resolves with true when `promise` settles within `ms`, and with false when it does not. */
function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: Timer | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  return Promise.race([promise.then(() => true), timeout]).finally(() => clearTimeout(timer));
}

/** Returns the stderr lines that mention `text`, waiting up to 2 s for the first one. */
async function stderrLinesWith(proxy: ProxyProcess, text: string): Promise<string[]> {
  const lines = () =>
    proxy
      .stderr()
      .split("\n")
      .filter((line) => line.includes(text));
  for (let waited = 0; lines().length === 0 && waited < 2000; waited += 50) await Bun.sleep(50);
  return lines();
}

/** Checks that an error page is short plain text with no stack trace or source path in it. */
function expectPlainErrorPage(reply: Reply): void {
  expect(headerValues(reply.headers, "content-type")[0]).toStartWith("text/plain");
  expect(reply.body.trim()).not.toBe("");
  expect(reply.body.length).toBeLessThan(200);
  expect(reply.body).not.toMatch(/\n\s+at /);
  expect(reply.body).not.toMatch(/\.(ts|js):\d+/);
  expect(reply.body).not.toMatch(/\/(work|src|tmp|root|home)\//);
}

describe.each(PROXY_COMMANDS)("ssl-proxy ($name)", (command) => {
  describe("request line", () => {
    test("keeps raw path from curl", async () => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/a%2Fb//c/d?x=%2F&y=1"), ["--path-as-is"]);

      expect(onlyRequest(backend).requestLine).toBe("GET /a%2Fb//c/d?x=%2F&y=1 HTTP/1.1");

      expect(reply.status).toBe(200);
      expect(reply.body).toBe("ok");
    });

    test("keeps raw path over TLS", async () => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);
      const target = "//a//b/c%2F%2e?q=a%20b&r=/../&s";
      const request = `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`;

      const reply = await sendOverTls(proxy.port, request);

      expect(onlyRequest(backend).requestLine).toBe(`GET ${target} HTTP/1.1`);

      expect(reply.status).toBe(200);
      expect(reply.body).toBe("ok");
    });

    // NOTE: Bun.serve resolves "." and ".." segments before the handler runs, so they cannot be
    // passed on; the README lists this limit. This test fails once Bun keeps them.
    test("resolves dot segments before forwarding", async () => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);
      const request = `GET /a%2Fb//c/./x/../d?y=/../ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`;

      const reply = await sendOverTls(proxy.port, request);

      expect(onlyRequest(backend).requestLine).toBe("GET /a%2Fb//c/d?y=/../ HTTP/1.1");

      expect(reply.status).toBe(200);
    });

    test.each(["/app", "/app/"])("joins base path %p with one slash", async (basePath) => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", `${backend.url}${basePath}`]);

      const reply = await curl(proxyURL(proxy, "/x/y"));

      expect(onlyRequest(backend).requestLine).toBe("GET /app/x/y HTTP/1.1");

      expect(reply.status).toBe(200);
    });

    test("merges base and request queries", async () => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", `${backend.url}/base?a=1`]);

      const reply = await curl(proxyURL(proxy, "/x?b=2"));

      expect(onlyRequest(backend).requestLine).toBe("GET /base/x?a=1&b=2 HTTP/1.1");

      expect(reply.status).toBe(200);
    });

    test.each(["PUT", "DELETE", "OPTIONS", "PATCH"])("forwards %s method", async (method) => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/item"), ["-X", method]);

      expect(onlyRequest(backend).requestLine).toBe(`${method} /item HTTP/1.1`);

      expect(reply.status).toBe(200);
    });

    test("forwards binary body bytes", async () => {
      const body = Buffer.from(Array.from({ length: 1024 }, (_, i) => (i * 7) % 256));
      const bodyFile = join(makeTempDir("body"), "upload.bin");
      writeFileSync(bodyFile, body);
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/upload"), ["--data-binary", `@${bodyFile}`]);

      expect(onlyRequest(backend).requestLine).toBe("POST /upload HTTP/1.1");
      expect(onlyRequest(backend).body.equals(body)).toBe(true);

      expect(reply.status).toBe(200);
    });
  });

  describe("request headers", () => {
    test("forwards end-to-end headers", async () => {
      const sent: [string, string][] = [
        ["Authorization", "Bearer secret-token"],
        ["Cookie", "a=1; b=2"],
        ["Content-Type", "application/json"],
        ["Accept", "text/html"],
        ["User-Agent", "e2e-client/1.0"],
        ["X-Custom", "some value, with comma"],
      ];
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const lines = sent.map(([name, value]) => `${name}: ${value}`);
      const reply = await curl(proxyURL(proxy, "/"), headerArgs(lines));

      for (const [name, value] of sent) expect(receivedValues(backend, name)).toEqual([value]);

      expect(reply.status).toBe(200);
    });

    test("keeps client Host", async () => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"));

      expect(receivedValues(backend, "host")).toEqual([`127.0.0.1:${proxy.port}`]);

      expect(reply.status).toBe(200);
    });

    test("keeps custom Host header", async () => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"), headerArgs(["Host: app.example:8443"]));

      expect(receivedValues(backend, "host")).toEqual(["app.example:8443"]);

      expect(reply.status).toBe(200);
    });

    test("sets X-Forwarded-Proto to https", async () => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"), headerArgs(["X-Forwarded-Proto: http"]));

      expect(receivedValues(backend, "x-forwarded-proto")).toEqual(["https"]);

      expect(reply.status).toBe(200);
    });

    test("sets X-Forwarded-Port to listened port", async () => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"));

      expect(receivedValues(backend, "x-forwarded-port")).toEqual([String(proxy.port)]);

      expect(reply.status).toBe(200);
    });

    test("appends client to X-Forwarded-For", async () => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"), headerArgs(["X-Forwarded-For: 10.1.2.3"]));

      expect(receivedValues(backend, "x-forwarded-for")).toEqual(["10.1.2.3, 127.0.0.1"]);

      expect(reply.status).toBe(200);
    });

    test("sets X-Forwarded-For to client", async () => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"));

      expect(receivedValues(backend, "x-forwarded-for")).toEqual(["127.0.0.1"]);

      expect(reply.status).toBe(200);
    });

    test("sets X-Forwarded-Host to Host", async () => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"), headerArgs(["Host: app.example:8443"]));

      expect(receivedValues(backend, "x-forwarded-host")).toEqual(["app.example:8443"]);

      expect(reply.status).toBe(200);
    });

    test.each(CLIENT_PATHS)("adds no Accept-Encoding at %p", async (path) => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, path));

      expect(onlyRequest(backend).requestLine).toBe(`GET ${path} HTTP/1.1`);
      expect(receivedValues(backend, "accept-encoding")).toEqual([]);

      expect(reply.status).toBe(200);
    });

    test("keeps Accept-Encoding identity", async () => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"), headerArgs(["Accept-Encoding: identity"]));

      expect(receivedValues(backend, "accept-encoding")).toEqual(["identity"]);

      expect(reply.status).toBe(200);
    });

    test("drops hop-by-hop request headers", async () => {
      const hopByHop = [
        "Keep-Alive: timeout=5",
        "Proxy-Connection: keep-alive",
        "TE: trailers",
        "Trailer: X-Checksum",
        "Upgrade: websocket",
      ];
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"), headerArgs(hopByHop));

      for (const name of ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"]) {
        expect(receivedValues(backend, name)).toEqual([]);
      }

      expect(reply.status).toBe(200);
    });

    test("drops headers named in Connection", async () => {
      const backend = await launchRawBackend();
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const lines = ["Connection: x-secret", "X-Secret: 1"];
      const reply = await curl(proxyURL(proxy, "/"), headerArgs(lines));

      expect(receivedValues(backend, "x-secret")).toEqual([]);
      expect(receivedValues(backend, "connection").join(",")).not.toContain("x-secret");

      expect(reply.status).toBe(200);
    });
  });

  describe("response", () => {
    test.each([201, 404, 418])("passes status %d", async (status) => {
      const body = `body of ${status}`;
      const backend = await launchRawBackend(() => httpResponse(`${status} Any Reason`, [], body));
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"));

      expect(onlyRequest(backend).requestLine).toBe("GET / HTTP/1.1");

      expect(reply.status).toBe(status);
      expect(reply.body).toBe(body);
    });

    test("passes 204 without body", async () => {
      const backend = await launchRawBackend(() => httpResponse("204 No Content", ["X-Done: yes"]));
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"), ["-X", "DELETE"]);

      expect(onlyRequest(backend).requestLine).toBe("DELETE / HTTP/1.1");

      expect(reply.status).toBe(204);
      expect(headerValues(reply.headers, "x-done")).toEqual(["yes"]);
      expect(reply.body).toBe("");
    });

    test.each(CLIENT_PATHS)("keeps gzip body bytes at %p", async (path) => {
      const gzipped = gzipSync("compressed hello ".repeat(100));
      const headers = ["Content-Type: text/plain", "Content-Encoding: gzip"];
      const backend = await launchRawBackend(() => httpResponse("200 OK", headers, gzipped));
      const proxy = await launchProxy(command, ["-to", backend.url]);
      const bodyFile = join(makeTempDir("body"), "reply.gz");

      const reply = await curl(proxyURL(proxy, path), ["-o", bodyFile]);

      expect(onlyRequest(backend).requestLine).toBe(`GET ${path} HTTP/1.1`);

      expect(headerValues(reply.headers, "content-encoding")).toEqual(["gzip"]);
      expect(readFileSync(bodyFile).equals(gzipped)).toBe(true);
    });

    test.each(CLIENT_PATHS)("keeps each Set-Cookie line at %p", async (path) => {
      const cookies = [
        "a=1; Path=/; HttpOnly",
        "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT",
        "c=3; SameSite=Lax",
      ];
      const headers = cookies.map((cookie) => `Set-Cookie: ${cookie}`);
      const backend = await launchRawBackend(() => httpResponse("200 OK", headers, "ok"));
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, path));

      expect(onlyRequest(backend).requestLine).toBe(`GET ${path} HTTP/1.1`);

      expect(headerValues(reply.headers, "set-cookie")).toEqual(cookies);
    });

    test("keeps end-to-end response headers", async () => {
      const sent: [string, string][] = [
        ["Content-Type", "application/json; charset=utf-8"],
        ["Cache-Control", "no-store"],
        ["ETag", '"v1"'],
        ["X-Custom", "value, with comma"],
      ];
      const lines = sent.map(([name, value]) => `${name}: ${value}`);
      const backend = await launchRawBackend(() => httpResponse("200 OK", lines, "{}"));
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"));

      expect(onlyRequest(backend).requestLine).toBe("GET / HTTP/1.1");

      for (const [name, value] of sent) expect(headerValues(reply.headers, name)).toEqual([value]);
      expect(reply.body).toBe("{}");
    });

    test.each(CLIENT_PATHS)("hands redirect to client at %p", async (path) => {
      const backend = await launchRawBackend((request) =>
        request.requestLine === `GET ${path} HTTP/1.1`
          ? httpResponse("302 Found", ["Location: /next?x=%2F"], "")
          : httpResponse("200 OK", [], "followed"),
      );
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, path));

      expect(onlyRequest(backend).requestLine).toBe(`GET ${path} HTTP/1.1`);

      expect(reply.status).toBe(302);
      expect(headerValues(reply.headers, "location")).toEqual(["/next?x=%2F"]);
      expect(reply.body).toBe("");
    });

    test.each(CLIENT_PATHS)("drops hop-by-hop response headers at %p", async (path) => {
      const headers = [
        "Keep-Alive: timeout=5",
        "Proxy-Connection: keep-alive",
        "TE: trailers",
        "Trailer: X-Checksum",
        "Upgrade: h2c",
        "X-Kept: yes",
      ];
      const backend = await launchRawBackend(() => httpResponse("200 OK", headers, "ok"));
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, path));

      expect(onlyRequest(backend).requestLine).toBe(`GET ${path} HTTP/1.1`);

      for (const name of ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"]) {
        expect(headerValues(reply.headers, name)).toEqual([]);
      }
      expect(headerValues(reply.headers, "x-kept")).toEqual(["yes"]);
      expect(reply.body).toBe("ok");
    });

    test("drops headers named in response Connection", async () => {
      const headers = ["Connection: x-secret", "X-Secret: 1"];
      const backend = await launchRawBackend(() => httpResponse("200 OK", headers, "ok"));
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"));

      expect(onlyRequest(backend).requestLine).toBe("GET / HTTP/1.1");

      expect(headerValues(reply.headers, "x-secret")).toEqual([]);
      expect(headerValues(reply.headers, "connection").join(",")).not.toContain("x-secret");
      expect(reply.body).toBe("ok");
    });

    test("drops a header named Close with Connection: close", async () => {
      const headers = ["Connection: close", "Close: secret"];
      const backend = await launchRawBackend(() => httpResponse("200 OK", headers, "ok"));
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/"));

      expect(onlyRequest(backend).requestLine).toBe("GET / HTTP/1.1");

      expect(headerValues(reply.headers, "close")).toEqual([]);
      expect(reply.body).toBe("ok");
    });

    test("trims only spaces and tabs around values", async () => {
      const headers = ["X-Padded: \t one two \t", "X-Latin: caf\xe9\xa0"];
      const backend = await launchRawBackend(() => httpResponse("200 OK", headers, "ok"));
      const proxy = await launchProxy(command, ["-to", backend.url]);
      const socket = await openTls(proxy.port);
      const received = readUntilClose(socket);

      socket.write("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
      const text = await received;

      expect(onlyRequest(backend).requestLine).toBe("GET / HTTP/1.1");

      expect(text).toMatch(/^x-padded: one two\r$/im);
      // A no-break space (0xA0) is obs-text, part of the value (RFC 9110 section 5.5).
      expect(text).toMatch(/^x-latin: caf\xe9\xa0\r$/im);
    });
  });

  describe("streaming", () => {
    test.each(CLIENT_PATHS)("streams upload chunk by chunk at %p", async (path) => {
      const received: string[] = [];
      let backendPath = "";
      const firstChunk = Promise.withResolvers<void>();
      const backend = launchBunBackend(async (req) => {
        backendPath = new URL(req.url).pathname;
        for await (const piece of req.body!) {
          received.push(decoder.decode(piece));
          firstChunk.resolve();
        }
        return new Response(`received ${received.join("")}`);
      });
      const proxy = await launchProxy(command, ["-to", backend.url]);
      const socket = await openTls(proxy.port);
      const replyText = readUntilClose(socket);
      const head = `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n`;

      socket.write(`${head}Connection: close\r\n\r\n${chunk("first;")}`);
      const firstSeenBeforeEnd = await settlesWithin(firstChunk.promise, PIECE_WAIT_MS);
      socket.write(`${chunk("second")}0\r\n\r\n`);
      const reply = parseRawReply(await replyText);

      expect(backendPath).toBe(path);
      expect(firstSeenBeforeEnd).toBe(true);
      expect(received[0]).toBe("first;");
      expect(received.join("")).toBe("first;second");

      expect(reply.status).toBe(200);
      expect(reply.body).toBe("received first;second");
    });

    test.each(CLIENT_PATHS)("streams response piece by piece at %p", async (path) => {
      const clientSawFirst = Promise.withResolvers<void>();
      let firstSeenBeforeSecond: boolean | undefined;
      let backendPath = "";
      const backend = launchBunBackend((req) => {
        backendPath = new URL(req.url).pathname;
        let pulls = 0;
        const events = new ReadableStream<Uint8Array>({
          async pull(controller) {
            pulls += 1;
            if (pulls === 1) {
              controller.enqueue(encoder.encode("data: 1\n\n"));
            } else if (pulls === 2) {
              firstSeenBeforeSecond = await settlesWithin(clientSawFirst.promise, PIECE_WAIT_MS);
              controller.enqueue(encoder.encode("data: 2\n\n"));
            } else {
              controller.close();
            }
          },
        });
        return new Response(events, { headers: { "Content-Type": "text/event-stream" } });
      });
      const proxy = await launchProxy(command, ["-to", backend.url]);
      const socket = await openTls(proxy.port);
      const replyText = readUntilClose(socket);
      let seen = "";
      socket.on("data", (piece: Buffer) => {
        seen += piece.toString("latin1");
        if (seen.includes("data: 1")) clientSawFirst.resolve();
      });

      socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
      const reply = parseRawReply(await replyText);

      expect(backendPath).toBe(path);
      expect(firstSeenBeforeSecond).toBe(true);

      expect(reply.status).toBe(200);
      expect(headerValues(reply.headers, "content-type")).toEqual(["text/event-stream"]);
      expect(reply.body).toBe("data: 1\n\ndata: 2\n\n");
    });
  });

  describe("backend failure", () => {
    test("returns 502 on refused connection", async () => {
      const closedPort = await findFreePort();
      const proxy = await launchProxy(command, ["-to", `http://127.0.0.1:${closedPort}`]);

      const reply = await curl(proxyURL(proxy, "/check-refused"));

      expect(reply.status).toBe(502);
      expectPlainErrorPage(reply);

      const lines = await stderrLinesWith(proxy, "/check-refused");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/refused/i);
    });

    test("returns 502 on dropped connection", async () => {
      const backend = await launchSocketBackend((socket) => {
        socket.once("data", () => socket.destroy());
      });
      const proxy = await launchProxy(command, ["-to", backend.url]);

      const reply = await curl(proxyURL(proxy, "/check-dropped"));

      expect(reply.status).toBe(502);
      expectPlainErrorPage(reply);

      const lines = await stderrLinesWith(proxy, "/check-dropped");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/closed|reset/i);
    });

    test("returns 504 after upstreamTimeout", async () => {
      const backend = await launchSocketBackend(() => {});
      const proxy = await launchProxy(command, ["-to", backend.url, "-upstreamTimeout", "1s"]);
      const started = performance.now();

      const reply = await curl(proxyURL(proxy, "/check-timeout"));
      const elapsedMs = performance.now() - started;

      expect(backend.sockets.size).toBe(1);

      expect(reply.status).toBe(504);
      expect(elapsedMs).toBeGreaterThanOrEqual(900);
      expect(elapsedMs).toBeLessThan(5000);
      expectPlainErrorPage(reply);

      const lines = await stderrLinesWith(proxy, "/check-timeout");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/in time|timed out|timeout/i);
    });
  });

  describe("Flask app", () => {
    let flask: Awaited<ReturnType<typeof startFlask>>;

    beforeAll(async () => {
      flask = await startFlask();
    });

    afterAll(() => {
      flask.stop();
    });

    test("GET returns Flask's text", async () => {
      const proxy = await launchProxy(command, ["-to", flask.url]);

      const reply = await curl(proxyURL(proxy, "/hello"));

      expect(reply.status).toBe(200);
      expect(reply.body).toBe("Hello from Flask\n");
    });

    test("GET returns Flask's echo", async () => {
      const proxy = await launchProxy(command, ["-to", flask.url]);

      const reply = await curl(proxyURL(proxy, "/items/7?q=a%2Fb"));
      const echo = JSON.parse(reply.body);

      expect(echo.method).toBe("GET");
      expect(echo.raw_uri).toBe("/items/7?q=a%2Fb");
      expect(echo.headers["X-Forwarded-Proto"]).toBe("https");

      expect(reply.status).toBe(200);
      expect(headerValues(reply.headers, "content-type")).toEqual(["application/json"]);
    });

    test("POST returns Flask's echo", async () => {
      const body = JSON.stringify({ name: "ssl-proxy", list: [1, 2, 3] });
      const proxy = await launchProxy(command, ["-to", flask.url]);

      const args = [...headerArgs(["Content-Type: application/json"]), "--data-binary", body];
      const reply = await curl(proxyURL(proxy, "/submit"), args);
      const echo = JSON.parse(reply.body);

      expect(echo.method).toBe("POST");
      expect(echo.path).toBe("/submit");
      expect(echo.body).toBe(body);
      expect(echo.body_length).toBe(body.length);

      expect(reply.status).toBe(200);
    });
  });
});

// These tests wait longer than the front end's idle timeout, so they run concurrently for both
// commands instead of one after another.
describe("ssl-proxy with slow backend", () => {
  test.concurrent.each(PROXY_COMMANDS)(
    "responds after idle timeout ($name)",
    async (command) => {
      let requests = 0;
      const backend = startBunBackend(async () => {
        requests += 1;
        await Bun.sleep(BEYOND_IDLE_TIMEOUT_MS);
        return new Response("late body\n");
      });
      const proxy = await startProxy(command, ["-to", backend.url]);
      try {
        const reply = await curl(proxyURL(proxy, "/slow"), ["-m", "30"]);

        expect(requests).toBe(1);

        expect(reply.status).toBe(200);
        expect(reply.body).toBe("late body\n");
      } finally {
        await proxy.stop();
        backend.stop();
      }
    },
    30_000,
  );

  test.concurrent.each(PROXY_COMMANDS)(
    "keeps quiet stream open ($name)",
    async (command) => {
      let pulls = 0;
      const backend = startBunBackend(() => {
        const pieces = new ReadableStream<Uint8Array>({
          async pull(controller) {
            pulls += 1;
            if (pulls === 1) {
              controller.enqueue(encoder.encode("part 1\n"));
            } else if (pulls === 2) {
              await Bun.sleep(BEYOND_IDLE_TIMEOUT_MS);
              controller.enqueue(encoder.encode("part 2\n"));
            } else {
              controller.close();
            }
          },
        });
        return new Response(pieces);
      });
      const proxy = await startProxy(command, ["-to", backend.url]);
      try {
        const reply = await curl(proxyURL(proxy, "/quiet"), ["-m", "30"]);

        expect(pulls).toBe(3);

        expect(reply.status).toBe(200);
        expect(reply.body).toBe("part 1\npart 2\n");
      } finally {
        await proxy.stop();
        backend.stop();
      }
    },
    30_000,
  );
});
