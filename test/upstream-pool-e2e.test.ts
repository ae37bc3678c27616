import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { PROXY_COMMANDS, run, startProxy, startRawBackend, type ProxyProcess } from "./helpers.ts";

// A backend on raw sockets that numbers its connections, so that the tests can see which
// connection of ssl-proxy's pool each request came on.

/** What the backend saw of one request. */
interface Seen {
  connection: number;
  method: string;
  path: string;
}

/** Raw responses by path. Other paths get the number of their connection as the body. */
const ANSWERS: Record<string, string> = {
  "/close-header": "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbye.",
  "/http10": "HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold.",
  "/cl-and-te":
    "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n" +
    "5\r\nhello\r\n0\r\n\r\n",
  "/extra-bytes": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
  "/chunk-extensions":
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
    "5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1\r\n\r\n",
  "/folded-header": "HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",
  "/control-character": "HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nok",
};

let backend: Awaited<ReturnType<typeof startRawBackend>>;
const seen: Seen[] = [];

beforeAll(async () => {
  backend = await startRawBackend((request, connection) => {
    const [method = "", path = ""] = request.requestLine.split(" ");
    seen.push({ connection: connection.id, method, path });
    if (path === "/unanswered-on-reuse" && connection.requests > 1) {
      connection.socket.destroy();
      return undefined;
    }
    if (path === "/until-close") {
      connection.socket.end("HTTP/1.1 200 OK\r\n\r\nread until the close");
      return undefined;
    }
    const body = String(connection.id);
    return ANSWERS[path] ?? `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
  });
});

afterAll(() => backend.close());

describe.each(PROXY_COMMANDS)("backend connection pool ($name)", (command) => {
  let proxy: ProxyProcess;

  beforeAll(async () => {
    proxy = await startProxy(command, ["-to", `http://127.0.0.1:${backend.port}`]);
  });

  afterAll(() => proxy.stop());

  async function get(path: string, extra: string[] = []) {
    const marker = "\nSTATUS=";
    const url = `https://127.0.0.1:${proxy.port}${path}`;
    const result = await run([
      "curl",
      "-sk",
      "-m",
      "10",
      ...extra,
      "-w",
      `${marker}%{http_code}`,
      url,
    ]);
    const end = result.stdout.lastIndexOf(marker);
    return {
      status: Number(result.stdout.slice(end + marker.length)),
      body: result.stdout.slice(0, end),
    };
  }

  /** Returns the number of the backend connection that the next plain request arrives on. */
  async function nextConnection(): Promise<string> {
    return (await get("/connection")).body;
  }

  test("sends sequential requests on one backend connection", async () => {
    const first = await nextConnection();
    expect(await nextConnection()).toBe(first);
    expect(await nextConnection()).toBe(first);
  });

  test("resends a GET after a stale connection", async () => {
    const pooled = await nextConnection();
    const before = seen.length;

    const result = await get("/unanswered-on-reuse");

    expect(result.status).toBe(200);
    expect(result.body).not.toBe(pooled);
    const attempts = seen.slice(before).filter((entry) => entry.path === "/unanswered-on-reuse");
    expect(attempts.map((entry) => String(entry.connection))).toEqual([pooled, result.body]);
  });

  test("never resends a POST after a stale connection", async () => {
    await nextConnection();
    const before = seen.length;

    const result = await get("/unanswered-on-reuse", ["-X", "POST", "--data", "once"]);

    expect(result.status).toBe(502);
    const attempts = seen.slice(before).filter((entry) => entry.path === "/unanswered-on-reuse");
    expect(attempts).toHaveLength(1);
  });

  test.each([
    ["/close-header", "bye."],
    ["/http10", "old."],
    ["/cl-and-te", "hello"],
    ["/extra-bytes", "ok"],
  ])("passes %s whole and then leaves its connection", async (path, body) => {
    const result = await get(path);
    const afterwards = seen.at(-1)!.connection;

    expect(result).toEqual({ status: 200, body });
    expect(await nextConnection()).not.toBe(String(afterwards));
  });

  test("passes a body that ends with the connection", async () => {
    expect(await get("/until-close")).toEqual({ status: 200, body: "read until the close" });
  });

  test("decodes chunk extensions and trailers and keeps the connection", async () => {
    const result = await get("/chunk-extensions");
    const afterwards = seen.at(-1)!.connection;

    expect(result).toEqual({ status: 200, body: "hello world" });
    expect(await nextConnection()).toBe(String(afterwards));
  });

  test.each(["/folded-header", "/control-character"])("responds 502 to %s", async (path) => {
    const result = await get(path);

    expect(result.status).toBe(502);
    expect(await get("/connection")).toMatchObject({ status: 200 });
  });
});
