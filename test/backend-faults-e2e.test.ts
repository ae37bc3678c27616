import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Socket } from "node:net";
import {
  PROXY_COMMANDS,
  findFreePort,
  run,
  startProxy,
  startRawBackend,
  type ProxyProcess,
} from "./helpers.ts";

/** Backend behaviours that cut a response after its head and 10 body bytes. */
const CUT_RESPONSES: Record<string, (socket: Socket) => void> = {
  "closes mid large Content-Length body": (socket) =>
    writeThen(socket, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n0123456789", () =>
      socket.destroy(),
    ),
  "closes mid chunked body": (socket) =>
    writeThen(
      socket,
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
      () => socket.destroy(),
    ),
  "resets mid large body": (socket) =>
    writeThen(socket, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n0123456789", () =>
      socket.resetAndDestroy(),
    ),
};

/** Cut bodies of at most 64 KiB, which the proxy reads whole before it responds to the client. */
const CUT_SMALL_RESPONSES: Record<string, (socket: Socket) => void> = {
  "closes mid small Content-Length body": (socket) =>
    writeThen(socket, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", () =>
      socket.destroy(),
    ),
  "resets mid small body": (socket) =>
    writeThen(socket, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", () =>
      socket.resetAndDestroy(),
    ),
};

/** Backend behaviours that give the proxy no usable response head. */
const BAD_ANSWERS: Record<string, (socket: Socket) => void> = {
  "resets before answering": (socket) => socket.resetAndDestroy(),
  "closes after the head's first line": (socket) => socket.end("HTTP/1.1 200 OK\r\n"),
  "answers text garbage": (socket) => socket.end("HELLO THERE\r\n\r\n"),
  "answers binary garbage": (socket) => socket.end(Buffer.from([0, 1, 2, 255, 13, 10, 13, 10])),
  "answers without a status line": (socket) => socket.end("ok"),
  "answers a non-numeric status": (socket) =>
    socket.end("HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nok"),
  "answers status 099": (socket) => socket.end("HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok"),
  "answers status 600": (socket) => socket.end("HTTP/1.1 600 High\r\nContent-Length: 2\r\n\r\nok"),
  "answers status 1000": (socket) =>
    socket.end("HTTP/1.1 1000 Long\r\nContent-Length: 2\r\n\r\nok"),
  "answers a header without colon": (socket) =>
    socket.end("HTTP/1.1 200 OK\r\nBad Header Line\r\nContent-Length: 2\r\n\r\nok"),
  "answers two Content-Lengths": (socket) =>
    socket.end("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk"),
};

/** The BAD_ANSWERS that arrive whole but break HTTP/1.1's rules, as opposed to a broken connection. */
const INVALID_ANSWERS = new Set([
  "answers text garbage",
  "answers binary garbage",
  "answers a non-numeric status",
  "answers status 099",
  "answers status 600",
  "answers status 1000",
  "answers a header without colon",
  "answers two Content-Lengths",
]);

const HANG = "hangs before answering";
const BEHAVIOURS: Record<string, (socket: Socket) => void> = {
  ...CUT_RESPONSES,
  ...CUT_SMALL_RESPONSES,
  ...BAD_ANSWERS,
  [HANG]: () => {},
};

// Some upstream clients send a path that starts with "//" another way (node:http for an
// https:// backend), so each fault is tried with one path of each kind.
const PREFIXES = ["/f", "//f"];

function writeThen(socket: Socket, text: string, then: () => void): void {
  socket.write(text, () => setTimeout(then, 50));
}

/** Turns a behaviour name into a path segment, as in "resets-mid-body". */
function slug(name: string): string {
  return name.replace(/[^a-z0-9]+/gi, "-");
}

let backend: Awaited<ReturnType<typeof startRawBackend>>;

beforeAll(async () => {
  const bySlug = new Map(Object.entries(BEHAVIOURS).map(([name, act]) => [slug(name), act]));
  backend = await startRawBackend((request, { socket }) => {
    const path = request.requestLine.split(" ")[1] ?? "/";
    const act = bySlug.get(path.slice(path.lastIndexOf("/") + 1));
    if (act) act(socket);
    else socket.end("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnext");
    return undefined;
  });
});

afterAll(() => backend.close());

/** What curl saw for one request through the proxy. */
interface CurlResult {
  exitCode: number;
  status: number;
  body: string;
}

async function fetchWithCurl(proxy: ProxyProcess, path: string): Promise<CurlResult> {
  const url = `https://127.0.0.1:${proxy.port}${path}`;
  const marker = "\nSTATUS=";
  const args = ["curl", "-sk", "--http1.1", "-m", "10", "-w", `${marker}%{http_code}`, url];
  const result = await run(args);
  const end = result.stdout.lastIndexOf(marker);
  return {
    exitCode: result.exitCode,
    status: Number(result.stdout.slice(end + marker.length)),
    body: result.stdout.slice(0, end),
  };
}

/**
 * Runs `act` and returns the lines the proxy wrote to stderr meanwhile, waiting up to 2 s for
 * the first one and 300 ms more for any that follow it.
 */
async function logLinesDuring<T>(proxy: ProxyProcess, act: () => Promise<T>) {
  const start = proxy.stderr().length;
  const result = await act();
  const added = () => proxy.stderr().slice(start).split("\n").filter(Boolean);
  for (let waited = 0; added().length === 0 && waited < 2_000; waited += 50) await Bun.sleep(50);
  await Bun.sleep(300);
  return { result, lines: added() };
}

describe.each(PROXY_COMMANDS)("backend faults ($name)", (command) => {
  let proxy: ProxyProcess;

  beforeAll(async () => {
    const to = `http://127.0.0.1:${backend.port}`;
    proxy = await startProxy(command, ["-to", to, "-upstreamTimeout", "1s"]);
  });

  afterAll(() => proxy.stop());

  describe.each(PREFIXES)("under %p", (prefix) => {
    test.each(Object.keys(CUT_RESPONSES))("aborts stream when app %s", async (name) => {
      const path = `${prefix}/${slug(name)}`;

      const { result, lines } = await logLinesDuring(proxy, () => fetchWithCurl(proxy, path));
      const next = await fetchWithCurl(proxy, `${prefix}/next`);

      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain(`GET ${path}: `);
      expect(lines[0]).toMatch(/broke off/);

      expect(result.status).toBe(200);
      expect(result.exitCode).not.toBe(0);
      expect(result.body).toBe("0123456789");
      expect(next.status).toBe(200);
      expect(next.body).toBe("next");
    });

    test.each(Object.keys(CUT_SMALL_RESPONSES))("returns 502 when app %s", async (name) => {
      const path = `${prefix}/${slug(name)}`;

      const { result, lines } = await logLinesDuring(proxy, () => fetchWithCurl(proxy, path));
      const next = await fetchWithCurl(proxy, `${prefix}/next`);

      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain(`GET ${path}: `);
      expect(lines[0]).toMatch(/broke off/);

      expect(result.exitCode).toBe(0);
      expect(result.status).toBe(502);
      expect(next.status).toBe(200);
      expect(next.body).toBe("next");
    });

    test.each(Object.keys(BAD_ANSWERS))("returns 502 when app %s", async (name) => {
      const path = `${prefix}/${slug(name)}`;

      const { result, lines } = await logLinesDuring(proxy, () => fetchWithCurl(proxy, path));
      const next = await fetchWithCurl(proxy, `${prefix}/next`);

      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain(`GET ${path}: `);
      expect(lines[0]).toContain(
        INVALID_ANSWERS.has(name) ? "invalid response from" : "cannot reach",
      );

      expect(result.exitCode).toBe(0);
      expect(result.status).toBe(502);
      expect(result.body).toBe(
        "Bad Gateway: ssl-proxy could not get an answer from the app behind it\n",
      );
      expect(next.status).toBe(200);
      expect(next.body).toBe("next");
    });

    test(`returns 504 when app ${HANG}`, async () => {
      const path = `${prefix}/${slug(HANG)}`;

      const { result, lines } = await logLinesDuring(proxy, () => fetchWithCurl(proxy, path));
      const next = await fetchWithCurl(proxy, `${prefix}/next`);

      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain(`GET ${path}: `);

      expect(result.status).toBe(504);
      expect(next.status).toBe(200);
      expect(next.body).toBe("next");
    });
  });
});

describe.each(PROXY_COMMANDS)("backend restart ($name)", (command) => {
  test.each(PREFIXES)("serves again after restart under %p", async (prefix) => {
    const port = await findFreePort();
    const serve = (text: string) =>
      Bun.serve({ hostname: "127.0.0.1", port, fetch: () => new Response(text) });
    let app = serve("first");
    const proxy = await startProxy(command, ["-to", `http://127.0.0.1:${port}`]);

    try {
      const before = await fetchWithCurl(proxy, `${prefix}/before`);
      await app.stop(true);
      const down = await logLinesDuring(proxy, () => fetchWithCurl(proxy, `${prefix}/down`));
      app = serve("second");
      const after = await logLinesDuring(proxy, () => fetchWithCurl(proxy, `${prefix}/after`));

      expect(down.lines).toHaveLength(1);
      expect(down.lines[0]).toContain(`GET ${prefix}/down: `);
      expect(after.lines).toEqual([]);

      expect(before.body).toBe("first");
      expect(down.result.status).toBe(502);
      expect(after.result.status).toBe(200);
      expect(after.result.body).toBe("second");
    } finally {
      await proxy.stop();
      await app.stop(true);
    }
  });
});
