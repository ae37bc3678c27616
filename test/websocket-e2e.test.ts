import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { PROXY_COMMANDS, findFreePort, startProxy, type ProxyProcess } from "./helpers.ts";

/** What the WebSocket backend saw of each handshake. */
const handshakes: {
  path: string;
  cookie: string | null;
  authorization: string | null;
  offered: string | null;
}[] = [];
/** Close codes and reasons the backend saw, by the path each WebSocket was opened on. */
const closesSeen: { path: string; code: number; reason: string }[] = [];
const pingsSeen: string[] = [];
let backend: ReturnType<typeof Bun.serve>;

beforeAll(() => {
  backend = Bun.serve<{ path: string }>({
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
      const data = { path: url.pathname };
      if (server.upgrade(req, { data, ...(headers ? { headers } : {}) })) return;
      return new Response("not a WebSocket", { status: 400 });
    },
    websocket: {
      message(ws, message) {
        if (message === "close-4001") return ws.close(4001, "backend says bye");
        if (message === "ping-me") ws.ping("from the backend");
        else if (message === "drop") ws.terminate();
        else ws.send(message);
      },
      close(ws, code, reason) {
        closesSeen.push({ path: ws.data.path, code, reason });
      },
      ping(_, data) {
        pingsSeen.push(data.toString());
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
    const { ws } = await connect(proxy, "/leaves");

    ws.close(4321, "client leaves");
    await waitFor(() => closesSeen.some((close) => close.path === "/leaves"));

    expect(closesSeen.filter((close) => close.path === "/leaves")).toEqual([
      { path: "/leaves", code: 4321, reason: "client leaves" },
    ]);
  });

  test("passes pings both ways", async () => {
    pingsSeen.length = 0;
    const { ws } = await connect(proxy, "/");
    const pingsReceived: string[] = [];
    ws.addEventListener("ping", (event) => pingsReceived.push(Buffer.from(event.data).toString()));

    ws.ping("from the client");
    ws.send("ping-me");
    await waitFor(() => pingsSeen.length === 1 && pingsReceived.length === 1);
    ws.close();

    expect(pingsSeen).toEqual(["from the client"]);
    expect(pingsReceived).toEqual(["from the backend"]);
  });

  test("closes the backend's side when the client drops the connection", async () => {
    const { ws } = await connect(proxy, "/drops");

    ws.terminate();
    await waitFor(() => closesSeen.some((close) => close.path === "/drops"));

    expect(closesSeen.find((close) => close.path === "/drops")!.code).toBe(1011);
  });

  test("closes the client's side when the backend drops the connection", async () => {
    const { ws, closed } = await connect(proxy, "/");

    ws.send("drop");

    expect((await closed).code).toBe(1011);
  });
});

describe.each(PROXY_COMMANDS)("WebSockets to a stopped backend ($name)", (command) => {
  test("answers 502 and logs why in one line", async () => {
    const closedPort = await findFreePort();
    const proxy = await startProxy(command, ["-to", `http://127.0.0.1:${closedPort}`]);
    try {
      const ws = new WebSocket(`wss://127.0.0.1:${proxy.port}/ws`, {
        tls: { rejectUnauthorized: false },
      });
      const failed = await new Promise<boolean>((resolve) => {
        ws.onopen = () => resolve(false);
        ws.onerror = () => resolve(true);
      });
      await waitFor(() => proxy.stderr().includes("WebSocket"));

      expect(failed).toBe(true);
      const line = proxy
        .stderr()
        .split("\n")
        .find((entry) => entry.includes("WebSocket"));
      expect(line).toBe(
        `error: WebSocket http://127.0.0.1:${closedPort}/ws: closed before opening (1006)`,
      );
    } finally {
      await proxy.stop();
    }
  });
});
