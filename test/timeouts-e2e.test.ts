import { describe, expect, test } from "bun:test";
import { once } from "node:events";
import { PROXY_COMMANDS, openTls, run, startProxy } from "./helpers.ts";

const encoder = new TextEncoder();

/** Starts a backend whose one response is `body`, sent as a stream of pieces with pauses. */
function startStreamingBackend(contentType: string, pauseMs: number) {
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 60,
    fetch() {
      let pulls = 0;
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          pulls += 1;
          if (pulls === 1) return controller.enqueue(encoder.encode("data: one\n\n"));
          if (pulls === 2) {
            await Bun.sleep(pauseMs);
            return controller.enqueue(encoder.encode("data: two\n\n"));
          }
          controller.close();
        },
      });
      return new Response(body, { headers: { "content-type": contentType } });
    },
  });
  return { url: `http://127.0.0.1:${server.port}`, stop: () => server.stop(true) };
}

// Each test waits several seconds of idle time, so the tests run concurrently.
describe.concurrent("-idleTimeout", () => {
  test.each(PROXY_COMMANDS)(
    "closes an idle keep-alive connection after the limit ($name)",
    async (command) => {
      const backend = Bun.serve({
        hostname: "127.0.0.1",
        port: 0,
        fetch: () => new Response("ok"),
      });
      const proxy = await startProxy(command, ["-to", backend.url.href, "-idleTimeout", "2s"]);
      try {
        const socket = await openTls(proxy.port);
        let received = "";
        socket.on("data", (chunk) => (received += chunk));
        socket.write("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        const answered = performance.now();
        await once(socket, "close");
        const idleMs = performance.now() - answered;

        expect(received).toStartWith("HTTP/1.1 200");
        // Bun's idle timer ticks every few seconds, so the close comes up to about 4 s late.
        expect(idleMs).toBeGreaterThan(1_500);
        expect(idleMs).toBeLessThan(8_000);
      } finally {
        await proxy.stop();
        backend.stop(true);
      }
    },
    20_000,
  );

  // From -idleTimeout 8s on, the idle timer is switched off only once a request is slow.
  test.each(PROXY_COMMANDS)(
    "waits for a backend slower than the limit ($name)",
    async (command) => {
      const backend = Bun.serve({
        hostname: "127.0.0.1",
        port: 0,
        idleTimeout: 60,
        fetch: async () => {
          await Bun.sleep(14_000);
          return new Response("late");
        },
      });
      const proxy = await startProxy(command, ["-to", backend.url.href, "-idleTimeout", "8s"]);
      try {
        const result = await run(["curl", "-sSk", "-m", "30", `https://127.0.0.1:${proxy.port}/`]);

        expect(result.exitCode).toBe(0);
        expect(result.stdout).toBe("late");
      } finally {
        await proxy.stop();
        backend.stop(true);
      }
    },
    40_000,
  );

  test.each(PROXY_COMMANDS)(
    "keeps a Server-Sent Events stream open through a longer pause ($name)",
    async (command) => {
      const backend = startStreamingBackend("text/event-stream", 6_000);
      const proxy = await startProxy(command, ["-to", backend.url, "-idleTimeout", "2s"]);
      try {
        const result = await run(["curl", "-sSk", "-m", "20", `https://127.0.0.1:${proxy.port}/`]);

        expect(result.exitCode).toBe(0);
        expect(result.stdout).toBe("data: one\n\ndata: two\n\n");
      } finally {
        await proxy.stop();
        backend.stop();
      }
    },
    30_000,
  );

  test.each(PROXY_COMMANDS)(
    "cuts another streamed response that pauses longer than the limit ($name)",
    async (command) => {
      const backend = startStreamingBackend("text/plain", 10_000);
      const proxy = await startProxy(command, ["-to", backend.url, "-idleTimeout", "2s"]);
      try {
        const result = await run(["curl", "-sSk", "-m", "20", `https://127.0.0.1:${proxy.port}/`]);

        expect(result.exitCode).not.toBe(0);
        expect(result.exitCode).not.toBe(28); // curl's own -m timeout
        expect(result.stdout).toBe("data: one\n\n");
      } finally {
        await proxy.stop();
        backend.stop();
      }
    },
    30_000,
  );
});
