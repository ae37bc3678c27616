import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { PROXY_COMMANDS, startProxy, type ProxyProcess } from "./helpers.ts";

/** What the WebSocket backend saw of each handshake. */
const handshakes: {
  path: string;
  cookie: string | null;
  authorization: string | null;
  offered: string | null;
}[] = [];
const closesSeen: { code: number; reason: string }[] = [];
let backend: ReturnType<typeof Bun.serve>;

beforeAll(() => {
  backend = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req, server) {
      const url = new URL(req.url);
      handshakes.push({
        path: url.pathname + url.search,
        cookie: req.headers.get("cookie"),
        authorization: req.headers.get("authorization"),
        offered: req.headers.get("sec-websocket-protocol"),
      });
      // Chooses the last protocol offered, so that an echo of the first one would show.
      const offered = (req.headers.get("sec-websocket-protocol") ?? "")
        .split(",")
        .map((p) => p.trim());
      const chosen = offered.at(-1);
      const headers = chosen ? { "sec-websocket-protocol": chosen } : undefined;
      if (server.upgrade(req, { data: undefined, ...(headers ? { headers } : {}) })) return;
      return new Response("not a WebSocket", { status: 400 });
    },
    websocket: {
      message(ws, message) {
        if (message === "close-4001") return ws.close(4001, "backend says bye");
        ws.send(message);
      },
      close(_, code, reason) {
        closesSeen.push({ code, reason });
      },
    },
  });
});

afterAll(() => backend.stop(true));

/** Opens a WebSocket to the proxy, trusting its self-signed certificate, and waits until it is open. */
async function connect(proxy: ProxyProcess, path: string, protocols: string[] = []) {
  const ws = new WebSocket(`wss://127.0.0.1:${proxy.port}${path}`, {
    protocols,
    headers: { cookie: "session=abc123", authorization: "Bearer t0ken" },
    tls: { rejectUnauthorized: false },
  });
  ws.binaryType = "arraybuffer";
  const messages: (string | ArrayBuffer)[] = [];
  ws.onmessage = (event) => messages.push(event.data);
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.onclose = (event) => resolve({ code: event.code, reason: event.reason });
  });
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("WebSocket did not open"));
  });
  return { ws, messages, closed };
}

async function waitFor(condition: () => boolean, ms = 3000): Promise<void> {
  for (const started = Date.now(); !condition(); await Bun.sleep(10)) {
    if (Date.now() - started > ms) throw new Error("condition not met in time");
  }
}

describe.each(PROXY_COMMANDS)("WebSockets ($name)", (command) => {
  let proxy: ProxyProcess;

  beforeAll(async () => {
    proxy = await startProxy(command, ["-to", `http://127.0.0.1:${backend.port}`]);
  });

  afterAll(() => proxy.stop());

  test("passes cookies, headers and path", async () => {
    handshakes.length = 0;

    const { ws } = await connect(proxy, "/api/kernels/1/channels?session_id=42", [
      "v1.kernel.websocket.jupyter.org",
    ]);
    ws.close();

    expect(handshakes).toHaveLength(1);
    expect(handshakes[0]!.path).toBe("/api/kernels/1/channels?session_id=42");
    expect(handshakes[0]!.cookie).toBe("session=abc123");
    expect(handshakes[0]!.authorization).toBe("Bearer t0ken");
  });

  test("returns the backend's subprotocol", async () => {
    const { ws } = await connect(proxy, "/", ["first", "second"]);

    expect(ws.protocol).toBe("second");
    ws.close();
  });

  test("echoes text and binary frames", async () => {
    const { ws, messages } = await connect(proxy, "/");

    ws.send("hello");
    ws.send(new Uint8Array([0, 1, 2, 255]));
    await waitFor(() => messages.length === 2);
    ws.close();

    expect(messages[0]).toBe("hello");
    expect([...new Uint8Array(messages[1] as ArrayBuffer)]).toEqual([0, 1, 2, 255]);
  });

  test("passes the backend's close code", async () => {
    const { ws, closed } = await connect(proxy, "/");

    ws.send("close-4001");

    expect(await closed).toEqual({ code: 4001, reason: "backend says bye" });
  });

  test("passes the client's close code", async () => {
    closesSeen.length = 0;
    const { ws } = await connect(proxy, "/");

    ws.close(4321, "client leaves");
    await waitFor(() => closesSeen.length === 1);

    expect(closesSeen[0]).toEqual({ code: 4321, reason: "client leaves" });
  });
});
