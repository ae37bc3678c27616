import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { PROXY_COMMANDS, makeTempDir, startProxy } from "./helpers.ts";

const CHROMIUM = "/usr/bin/chromium";

/**
 * The page opens a WebSocket to its own origin, sends "hello", and reports the protocol the
 * page came over and the echo it got to /report, since a headless browser shows nothing.
 */
const PAGE = `<!doctype html>
<title>ssl-proxy browser test</title>
<script>
  const report = (result) => fetch("/report?" + new URLSearchParams(result));
  const protocol = performance.getEntriesByType("navigation")[0].nextHopProtocol;
  const ws = new WebSocket("wss://" + location.host + "/ws");
  ws.onopen = () => ws.send("hello");
  ws.onmessage = (event) => report({ protocol, echo: event.data });
  ws.onerror = () => report({ protocol, echo: "error" });
</script>`;

let backend: ReturnType<typeof Bun.serve>;
let reported: (result: Record<string, string>) => void;

beforeAll(() => {
  backend = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req, server) {
      const url = new URL(req.url);
      if (url.pathname === "/ws" && server.upgrade(req, { data: undefined })) return;
      if (url.pathname === "/report") {
        reported(Object.fromEntries(url.searchParams));
        return new Response("thanks");
      }
      return new Response(PAGE, { headers: { "content-type": "text/html; charset=utf-8" } });
    },
    websocket: {
      message(ws, message) {
        ws.send(`echo: ${message}`);
      },
    },
  });
});

afterAll(() => backend.stop(true));

describe.each(PROXY_COMMANDS)("headless Chromium ($name)", (command) => {
  test("loads the page over HTTP/2 and keeps a WebSocket working", async () => {
    if (!existsSync(CHROMIUM)) throw new Error("no Chromium: install the Debian package chromium");
    const proxy = await startProxy(command, ["-to", backend.url.href]);
    const result = new Promise<Record<string, string>>((resolve) => (reported = resolve));
    // The flags keep Chromium from reaching for any host but the proxy.
    const browser = Bun.spawn(
      [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--ignore-certificate-errors",
        `--user-data-dir=${makeTempDir("chromium")}`,
        `https://127.0.0.1:${proxy.port}/`,
      ],
      { stdout: "ignore", stderr: "ignore" },
    );
    try {
      const outcome = await Promise.race([result, Bun.sleep(30_000).then(() => "no report")]);

      expect(outcome).toEqual({ protocol: "h2", echo: "echo: hello" });
    } finally {
      browser.kill();
      await browser.exited;
      await proxy.stop();
    }
  }, 60_000);
});
