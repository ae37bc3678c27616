import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { once } from "node:events";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect, type TLSSocket } from "node:tls";
import { createSelfSignedCertificate } from "../src/certs.ts";
import {
  PROXY_COMMANDS,
  makeTempDir,
  run,
  startProxy,
  startRawBackend,
  type ProxyProcess,
} from "./helpers.ts";

const HOST = "Host: 127.0.0.1\r\n";
// A request hidden in a body: it reaches the backend only if the framing is read two ways.
const SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/** Requests whose body framing is ambiguous or invalid (RFC 9112 sections 6.1 to 6.3). */
const SMUGGLING: [string, string][] = [
  [
    "Content-Length with Transfer-Encoding",
    `POST /s HTTP/1.1\r\n${HOST}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  ],
  [
    "Transfer-Encoding with Content-Length",
    `POST /s HTTP/1.1\r\n${HOST}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  ],
  [
    "two different Content-Lengths",
    `POST /s HTTP/1.1\r\n${HOST}Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde${SMUGGLED}`,
  ],
  ["Content-Length: 3, 3", `POST /s HTTP/1.1\r\n${HOST}Content-Length: 3, 3\r\n\r\nabc`],
  ["Content-Length: +3", `POST /s HTTP/1.1\r\n${HOST}Content-Length: +3\r\n\r\nabc`],
  ["Content-Length: -1", `POST /s HTTP/1.1\r\n${HOST}Content-Length: -1\r\n\r\n`],
  [
    "Transfer-Encoding: xchunked",
    `POST /s HTTP/1.1\r\n${HOST}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  ],
  [
    "Transfer-Encoding: chunked, identity",
    `POST /s HTTP/1.1\r\n${HOST}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n`,
  ],
  [
    "Transfer-Encoding: gzip, chunked",
    `POST /s HTTP/1.1\r\n${HOST}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`,
  ],
  [
    "Transfer-Encoding twice",
    `POST /s HTTP/1.1\r\n${HOST}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
  ],
  [
    "Transfer-Encoding in HTTP/1.0",
    `POST /s HTTP/1.0\r\n${HOST}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  ],
  [
    "obs-fold in Transfer-Encoding",
    `POST /s HTTP/1.1\r\n${HOST}Transfer-Encoding:\r\n chunked\r\nContent-Length: 3\r\n\r\nabc`,
  ],
  ["obs-fold in another header", `GET /s HTTP/1.1\r\n${HOST}X-Folded: 1\r\n 2\r\n\r\n`],
  [
    "space before colon",
    `POST /s HTTP/1.1\r\n${HOST}Transfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc`,
  ],
  ["invalid chunk size", `POST /s HTTP/1.1\r\n${HOST}Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n`],
  ["NUL in a header value", `GET /s HTTP/1.1\r\n${HOST}X-Value: a\0b\r\n\r\n`],
];

/** Requests whose Host header is missing, repeated or not a host (RFC 9112 section 3.2). */
const BAD_HOSTS: [string, string][] = [
  ["HTTP/1.0 without Host", "GET /h HTTP/1.0\r\n\r\n"],
  ["HTTP/1.1 without Host", "GET /h HTTP/1.1\r\n\r\n"],
  ["empty Host", "GET /h HTTP/1.1\r\nHost: \r\n\r\n"],
  ["two Host headers", `GET /h HTTP/1.1\r\n${HOST}Host: evil.example\r\n\r\n`],
  ["Host with a space", "GET /h HTTP/1.1\r\nHost: a b\r\n\r\n"],
  ["Host with a path", "GET /h HTTP/1.1\r\nHost: 127.0.0.1/evil\r\n\r\n"],
  ["Host with userinfo", "GET /h HTTP/1.1\r\nHost: user@127.0.0.1\r\n\r\n"],
  ["Host with a query", "GET /h HTTP/1.1\r\nHost: a?b\r\n\r\n"],
  ["Host with an invalid port", "GET /h HTTP/1.1\r\nHost: 127.0.0.1:https\r\n\r\n"],
  ["Host that URL parsers reject", "GET /h HTTP/1.1\r\nHost: 927.0.0.1\r\n\r\n"],
  ["Host with UTF-8 bytes", "GET /h HTTP/1.1\r\nHost: \xc3\xa9.example\r\n\r\n"],
];

/** What the proxy sent back on one connection. */
interface RawReply {
  /** Everything received, as latin1 text. */
  text: string;
  /** The status code of the first response, or 0 when none came. */
  status: number;
  /** Whether the proxy closed the connection before the wait ended. */
  closed: boolean;
}

function openTls(port: number): Promise<TLSSocket> {
  const socket = connect({
    host: "127.0.0.1",
    port,
    rejectUnauthorized: false,
    ALPNProtocols: ["http/1.1"],
  });
  socket.on("error", () => {});
  return once(socket, "secureConnect").then(() => socket);
}

/**
 * Writes `request` (latin1) on a new TLS connection and collects what comes back until the proxy
 * closes the connection or `waitMs` passes after the first final response.
 */
async function sendRaw(port: number, request: string, waitMs = 300): Promise<RawReply> {
  const socket = await openTls(port);
  let text = "";
  const closed = once(socket, "close").then(() => true);
  const answered = Promise.withResolvers<void>();
  socket.on("data", (chunk: Buffer) => {
    text += chunk.toString("latin1");
    if (/^HTTP\/1\.1 [2-5]\d\d /m.test(text)) answered.resolve();
  });

  socket.write(Buffer.from(request, "latin1"));
  await Promise.race([answered.promise, closed, Bun.sleep(5_000)]);
  const isClosed = await Promise.race([closed, Bun.sleep(waitMs).then(() => false)]);
  socket.destroy();

  const status = Number(/^HTTP\/1\.1 ([2-5]\d\d) /m.exec(text)?.[1] ?? 0);
  return { text, status, closed: isClosed };
}

function bodyOf(reply: RawReply): string {
  return reply.text.slice(reply.text.indexOf("\r\n\r\n") + 4);
}

let backend: Awaited<ReturnType<typeof startRawBackend>>;
let certFiles: { cert: string; key: string };

beforeAll(async () => {
  backend = await startRawBackend();
  const folder = makeTempDir("hostile");
  const pair = await createSelfSignedCertificate(["a.test", "b.test"]);
  certFiles = { cert: join(folder, "cert.pem"), key: join(folder, "key.pem") };
  writeFileSync(certFiles.cert, pair.cert);
  writeFileSync(certFiles.key, pair.key, { mode: 0o600 });
});

afterAll(() => backend.close());

/** Runs `send` and returns its result with the requests the backend received meanwhile. */
async function watchBackend<T>(send: () => Promise<T>) {
  const before = backend.requests.length;
  const result = await send();
  await Bun.sleep(50);
  return { result, forwarded: backend.requests.slice(before) };
}

describe.each(PROXY_COMMANDS)("hostile input ($name)", (command) => {
  let proxy: ProxyProcess;

  beforeAll(async () => {
    proxy = await startProxy(command, ["-to", `http://127.0.0.1:${backend.port}`]);
  });

  afterAll(() => proxy.stop());

  test.each(SMUGGLING)("rejects %s with 400", async (_name, request) => {
    const { result, forwarded } = await watchBackend(() => sendRaw(proxy.port, request));

    expect(forwarded).toEqual([]);

    expect(result.status).toBe(400);
    expect(result.closed).toBe(true);
  });

  test("forwards repeated equal Content-Length once", async () => {
    const request = `POST /cl HTTP/1.1\r\n${HOST}Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc`;

    const { result, forwarded } = await watchBackend(() => sendRaw(proxy.port, request));

    expect(forwarded).toHaveLength(1);
    const lengths = forwarded[0]!.headers.filter(([name]) => /^content-length$/i.test(name));
    expect(lengths.map(([, value]) => value)).toEqual(["3"]);
    expect(forwarded[0]!.body.toString()).toBe("abc");

    expect(result.status).toBe(200);
  });

  test.each([
    ["a 17 KB header", `GET /big HTTP/1.1\r\n${HOST}X-Big: ${"a".repeat(17_000)}\r\n\r\n`],
    ["a 70 KB path", `GET /${"a".repeat(70_000)} HTTP/1.1\r\n${HOST}\r\n`],
    [
      "200 header lines",
      `GET /many HTTP/1.1\r\n${HOST}${Array.from({ length: 200 }, (_, i) => `X-H${i}: v\r\n`).join("")}\r\n`,
    ],
  ])("rejects %s with 431", async (_name, request) => {
    const { result, forwarded } = await watchBackend(() => sendRaw(proxy.port, request));

    expect(forwarded).toEqual([]);

    expect(result.status).toBe(431);
  });

  test.each(BAD_HOSTS)("rejects %s with 400", async (_name, request) => {
    const { result, forwarded } = await watchBackend(() => sendRaw(proxy.port, request));

    expect(forwarded).toEqual([]);

    expect(result.status).toBe(400);
    expect(result.text).not.toMatch(/evil|\n\s+at /);
  });

  test("rejects CONNECT with 400", async () => {
    const request = "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n";

    const { result, forwarded } = await watchBackend(() => sendRaw(proxy.port, request));

    expect(forwarded).toEqual([]);

    expect(result.status).toBe(400);
    expect(bodyOf(result)).toMatch(/CONNECT/);
  });

  test.each([
    "http://evil.example/abs?q=1",
    "https://evil.example:8443/abs?q=1",
    "http://user@evil.example/abs?q=1",
  ])("forwards absolute-form %p by Host only", async (target) => {
    const request = `GET ${target} HTTP/1.1\r\n${HOST}\r\n`;

    const { result, forwarded } = await watchBackend(() => sendRaw(proxy.port, request));

    expect(forwarded).toHaveLength(1);
    expect(forwarded[0]!.requestLine).toBe("GET /abs?q=1 HTTP/1.1");
    expect(forwarded[0]!.head).toMatch(/^Host: 127\.0\.0\.1$/m);
    expect(forwarded[0]!.head).not.toContain("evil.example");

    expect(result.status).toBe(200);
  });

  test("forwards Connection with non-token option", async () => {
    const request = `GET /conn HTTP/1.1\r\n${HOST}Connection: U\xebpgrade, x-secret\r\nX-Secret: 1\r\n\r\n`;

    const { result, forwarded } = await watchBackend(() => sendRaw(proxy.port, request));

    expect(forwarded).toHaveLength(1);
    expect(forwarded[0]!.head).not.toMatch(/x-secret/i);

    expect(result.status).toBe(200);
    expect(proxy.stderr()).not.toContain("/conn");
  });

  test("accepts any Host without -domain", async () => {
    const request = "GET /any HTTP/1.1\r\nHost: Other.Example:9\r\n\r\n";

    const { result, forwarded } = await watchBackend(() => sendRaw(proxy.port, request));

    expect(forwarded).toHaveLength(1);
    expect(forwarded[0]!.head).toMatch(/^Host: Other\.Example:9$/m);

    expect(result.status).toBe(200);
  });
});

describe.each(PROXY_COMMANDS)("-domain with -cert ($name)", (command) => {
  let proxy: ProxyProcess;

  beforeAll(async () => {
    proxy = await startProxy(command, [
      "-to",
      `http://127.0.0.1:${backend.port}`,
      "-domain",
      "a.test,b.test",
      "-cert",
      certFiles.cert,
      "-key",
      certFiles.key,
    ]);
  });

  afterAll(() => proxy.stop());

  test.each(["a.test", "A.TEST", "a.test.", "b.test", "a.test:PORT", "B.Test.:PORT"])(
    "serves Host %p",
    async (name) => {
      const host = name.replace("PORT", String(proxy.port));
      const request = `GET /served HTTP/1.1\r\nHost: ${host}\r\n\r\n`;

      const { result, forwarded } = await watchBackend(() => sendRaw(proxy.port, request));

      expect(forwarded).toHaveLength(1);
      expect(forwarded[0]!.head).toContain(`Host: ${host}\r\n`);

      expect(result.status).toBe(200);
    },
  );

  test.each(["evil.test", "c.a.test", "a.test..", "a.test:1", "127.0.0.1", "localhost"])(
    "answers Host %p with 421",
    async (host) => {
      const request = `GET /misdirected HTTP/1.1\r\nHost: ${host}\r\n\r\n`;

      const { result, forwarded } = await watchBackend(() => sendRaw(proxy.port, request));

      expect(forwarded).toEqual([]);

      expect(result.status).toBe(421);
      expect(bodyOf(result)).toBe(
        "Misdirected Request: this server does not serve that host name\n",
      );
      expect(result.closed).toBe(false);
      expect(proxy.stderr()).not.toContain("misdirected");
      expect(proxy.stdout()).not.toContain("misdirected");
    },
  );

  test("answers curl for unserved name with 421", async () => {
    const url = `https://evil.test:${proxy.port}/curl-misdirected`;
    const resolve = `evil.test:${proxy.port}:127.0.0.1`;

    const reply = await run([
      "curl",
      "-sk",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      "--resolve",
      resolve,
      url,
    ]);

    expect(reply.stdout).toBe("421");
    expect(backend.requests.some((r) => r.requestLine.includes("curl-misdirected"))).toBe(false);
  });

  test("checks Host over HTTP/2 too", async () => {
    const url = `https://a.test:${proxy.port}/h2-misdirected`;
    const resolve = `a.test:${proxy.port}:127.0.0.1`;
    const args = [
      "curl",
      "-sk",
      "--http2",
      "-o",
      "/dev/null",
      "-w",
      "%{http_version} %{http_code}",
    ];

    const served = await run([...args, "--resolve", resolve, url]);
    const other = await run([...args, "--resolve", resolve, "-H", "Host: evil.test", url]);

    expect(served.stdout).toBe("2 200");
    expect(other.stdout).toBe("2 421");
  });
});
