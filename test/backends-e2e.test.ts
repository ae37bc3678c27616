import { afterEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import {
  PROXY_COMMANDS,
  makeTempDir,
  run,
  startKernelApp,
  startProxy,
  type ProxyProcess,
} from "./helpers.ts";

const cleanups: (() => unknown)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function launchProxy(command: { argv: string[] }, to: string): Promise<ProxyProcess> {
  const proxy = await startProxy(command, ["-to", to]);
  cleanups.push(() => proxy.stop());
  return proxy;
}

/** Starts a Bun backend that returns what it received as JSON, and echoes WebSocket messages. */
function startEchoBackend(listen: { hostname: string; port: 0 } | { unix: string }, name: string) {
  const server = Bun.serve({
    ...listen,
    fetch(req, server) {
      if (server.upgrade(req, { data: undefined })) return;
      const url = new URL(req.url);
      return Response.json({
        name,
        method: req.method,
        target: url.pathname + url.search,
        host: req.headers.get("host"),
      });
    },
    websocket: {
      message(ws, message) {
        ws.send(`${name}: ${message}`);
      },
    },
  } as Parameters<typeof Bun.serve>[0]);
  cleanups.push(() => server.stop(true));
  return server;
}

/** Fetches `target` from the proxy with curl and returns the backend's JSON report. */
async function curlJson(proxy: ProxyProcess, target: string) {
  const result = await run(["curl", "-sSk", `https://127.0.0.1:${proxy.port}${target}`]);
  if (result.exitCode !== 0) throw new Error(`curl failed: ${result.stderr}`);
  return JSON.parse(result.stdout);
}

/** Opens a WebSocket through the proxy and resolves with its first message, or the failure. */
async function firstMessage(
  proxy: ProxyProcess,
  path: string,
  options: { protocols?: string[]; headers?: Record<string, string> } = {},
): Promise<{ message?: string; protocol?: string; failed?: boolean }> {
  const ws = new WebSocket(`wss://127.0.0.1:${proxy.port}${path}`, {
    ...options,
    tls: { rejectUnauthorized: false },
  });
  return new Promise((resolve) => {
    ws.onopen = () => ws.send("hi");
    ws.onmessage = (event) => {
      resolve({ message: String(event.data), protocol: ws.protocol });
      ws.close();
    };
    ws.onerror = () => resolve({ failed: true });
  });
}

describe.each(PROXY_COMMANDS)("backends ($name)", (command) => {
  test("-to unix:PATH forwards requests and WebSockets to a Unix socket", async () => {
    const socket = join(makeTempDir("sock"), "app.sock");
    startEchoBackend({ unix: socket }, "unix");

    const proxy = await launchProxy(command, `unix:${socket}`);

    expect(proxy.stdout()).toContain(`-> unix:${socket}`);
    const viaFetch = await curlJson(proxy, "/a/b?c=1");
    expect(viaFetch).toMatchObject({ name: "unix", target: "/a/b?c=1" });
    expect(viaFetch.host).toBe(`127.0.0.1:${proxy.port}`);
    expect(await curlJson(proxy, "//a")).toMatchObject({ name: "unix", target: "//a" });
    expect(await firstMessage(proxy, "/ws")).toMatchObject({ message: "unix: hi" });
  });

  test("-to unix:PATH with no socket there answers 502 and names the socket", async () => {
    const socket = join(makeTempDir("sock"), "missing.sock");
    const proxy = await launchProxy(command, `unix:${socket}`);

    const result = await run([
      "curl",
      "-sSk",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      `https://127.0.0.1:${proxy.port}/`,
    ]);

    expect(result.stdout).toBe("502");
    expect(proxy.stderr()).toContain(`cannot reach unix:${socket}: no such socket`);
  });

  test("-to [::1]:PORT reaches a backend on IPv6 loopback", async () => {
    const backend = startEchoBackend({ hostname: "::1", port: 0 }, "v6");

    const proxy = await launchProxy(command, `[::1]:${backend.port}`);

    expect(await curlJson(proxy, "/x")).toMatchObject({ name: "v6", target: "/x" });
    expect(await curlJson(proxy, "//x")).toMatchObject({ name: "v6", target: "//x" });
    expect(await firstMessage(proxy, "/ws")).toMatchObject({ message: "v6: hi" });
  });

  test.each(["::1", "127.0.0.1"])(
    "-to localhost:PORT reaches a backend listening only on %s",
    async (address) => {
      const backend = startEchoBackend({ hostname: address, port: 0 }, address);

      const proxy = await launchProxy(command, `localhost:${backend.port}`);

      expect(await curlJson(proxy, "/x")).toMatchObject({ name: address, target: "/x" });
      expect(await curlJson(proxy, "//x")).toMatchObject({ name: address, target: "//x" });
      expect(await firstMessage(proxy, "/ws")).toMatchObject({ message: `${address}: hi` });
    },
  );

  test("a Jupyter-style kernel channel opens with the login cookie and the page's Origin", async () => {
    const app = await startKernelApp();
    cleanups.push(() => app.stop());
    const proxy = await launchProxy(command, app.url);
    const origin = `https://127.0.0.1:${proxy.port}`;
    const login = await run(["curl", "-sSk", "-D", "-", "-o", "/dev/null", `${origin}/login`]);
    const cookie = /^set-cookie: (kernel-session=[^;]+)/im.exec(login.stdout)?.[1];
    expect(cookie).toBe("kernel-session=s3cret");

    const opened = await firstMessage(proxy, "/api/kernels/k1/channels?session_id=7", {
      protocols: ["v1.kernel.websocket.jupyter.org"],
      headers: { origin, cookie: cookie! },
    });
    const otherOrigin = await firstMessage(proxy, "/api/kernels/k1/channels", {
      headers: { origin: "https://other.example", cookie: cookie! },
    });
    const noCookie = await firstMessage(proxy, "/api/kernels/k1/channels", {
      headers: { origin },
    });

    expect(opened).toEqual({
      message: "kernel k1: hi",
      protocol: "v1.kernel.websocket.jupyter.org",
    });
    expect(otherOrigin).toEqual({ failed: true });
    expect(noCookie).toEqual({ failed: true });
  });
});
