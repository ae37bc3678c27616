import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { once } from "node:events";
import {
  PROXY_COMMANDS,
  openTls,
  startProxy,
  startRawBackend,
  type ProxyProcess,
} from "./helpers.ts";

/** The backend's raw responses, by the last path segment of the request. */
const ANSWERS: Record<string, string> = {
  len: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n",
  "not-modified": 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 5\r\n\r\n',
  "no-content": "HTTP/1.1 204 No Content\r\nX-Done: yes\r\n\r\n",
  hints:
    "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" +
    "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nafter hints",
  continue:
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nafter continue",
  ok: "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast",
};

/** One response read off the client's connection. */
interface Parsed {
  status: number;
  headers: string;
  body: string;
}

/**
 * Splits what the proxy sent on one connection into responses, framing each as a client must
 * (RFC 9112 section 6.3): no body after HEAD, 1xx, 204 or 304; otherwise Content-Length or
 * chunked. Interim 1xx responses are kept, so that a stray one would show.
 */
function parseResponses(text: string, methods: string[]): Parsed[] {
  const responses: Parsed[] = [];
  let rest = text;
  while (rest.length > 0) {
    const end = rest.indexOf("\r\n\r\n");
    if (end === -1) break; // the rest has not arrived yet
    const headers = rest.slice(0, end);
    rest = rest.slice(end + 4);
    const status = Number(headers.split(" ")[1]);
    const method = methods[responses.filter((r) => r.status >= 200).length];
    let body = "";
    if (status >= 200 && status !== 204 && status !== 304 && method !== "HEAD") {
      const length = /^content-length: (\d+)$/im.exec(headers)?.[1];
      if (length !== undefined) {
        if (rest.length < Number(length)) break;
        body = rest.slice(0, Number(length));
        rest = rest.slice(Number(length));
      } else if (/^transfer-encoding: chunked$/im.test(headers)) {
        for (;;) {
          const lineEnd = rest.indexOf("\r\n");
          if (lineEnd === -1) return responses;
          const size = parseInt(rest.slice(0, lineEnd), 16);
          body += rest.slice(lineEnd + 2, lineEnd + 2 + size);
          rest = rest.slice(lineEnd + 2 + size + 2);
          if (size === 0) break;
        }
      }
    }
    responses.push({ status, headers, body });
  }
  return responses;
}

let backend: Awaited<ReturnType<typeof startRawBackend>>;

beforeAll(async () => {
  backend = await startRawBackend((request) => {
    const path = request.requestLine.split(" ")[1]!;
    return ANSWERS[path.slice(path.lastIndexOf("/") + 1)] ?? ANSWERS.ok!;
  });
});

afterAll(() => backend.close());

/**
 * Sends `requests` on one TLS connection, each after the response to the one before (Bun.serve
 * closes a connection that pipelines behind an async handler), and returns all the proxy sent.
 */
async function exchange(proxy: ProxyProcess, requests: [string, string][]): Promise<string> {
  const socket = await openTls(proxy.port);
  let received = "";
  let onData = () => {};
  socket.on("data", (chunk) => {
    received += chunk;
    onData();
  });
  const methods = requests.map(([method]) => method);
  for (const [index, [method, path]] of requests.entries()) {
    const answered = new Promise<void>((resolve) => {
      onData = () => {
        const finals = parseResponses(received, methods).filter((r) => r.status >= 200);
        if (finals.length > index) resolve();
      };
    });
    const last = index === requests.length - 1 ? "Connection: close\r\n" : "";
    socket.write(`${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${last}\r\n`);
    await Promise.race([answered, once(socket, "close")]);
  }
  socket.destroy();
  return received;
}

describe.each(PROXY_COMMANDS)("response framing ($name)", (command) => {
  let proxy: ProxyProcess;

  beforeAll(async () => {
    proxy = await startProxy(command, ["-to", `http://127.0.0.1:${backend.port}`]);
  });

  afterAll(() => proxy.stop());

  // Some upstream clients send a path that starts with "//" another way (node:http for an
  // https:// backend), so both kinds of path are tried.
  test.each(["/x", "//x"])(
    "keeps HEAD, 1xx, 204 and 304 answers framed on one connection under %p",
    async (prefix) => {
      const requests: [string, string][] = [
        ["HEAD", `${prefix}/len`],
        ["GET", `${prefix}/not-modified`],
        ["GET", `${prefix}/no-content`],
        ["GET", `${prefix}/hints`],
        ["GET", `${prefix}/continue`],
        ["GET", `${prefix}/ok`],
      ];

      const responses = parseResponses(
        await exchange(proxy, requests),
        requests.map(([method]) => method),
      );

      expect(responses.map(({ status, body }) => [status, body])).toEqual([
        [200, ""],
        [304, ""],
        [204, ""],
        [200, "after hints"],
        [200, "after continue"],
        [200, "last"],
      ]);
      expect(responses[0]!.headers).toMatch(/^content-length: 5$/im);
      expect(responses[1]!.headers).toMatch(/^etag: "v1"$/im);
      expect(responses[2]!.headers).toMatch(/^x-done: yes$/im);
      // Bodies of at most 64 KiB are read whole, so they keep the backend's Content-Length.
      expect(responses[5]!.headers).toMatch(/^content-length: 4$/im);
    },
  );

  test("answers Connection: close with the same header and closes the connection", async () => {
    const socket = await openTls(proxy.port);
    let received = "";
    socket.on("data", (chunk) => (received += chunk));
    socket.write("GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");

    const closed = await Promise.race([
      once(socket, "close").then(() => true),
      Bun.sleep(3_000).then(() => false),
    ]);
    socket.destroy();

    expect(received).toStartWith("HTTP/1.1 200 ");
    expect(received).toMatch(/^connection: close$/im);
    expect(closed).toBe(true);
  });
});
