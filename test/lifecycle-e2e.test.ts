import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { findFreePort, PROXY_COMMANDS, run, startProxy, type ProxyProcess } from "./helpers.ts";

let backend: ReturnType<typeof Bun.serve>;
/** Whether the backend saw its streamed response cancelled, by request id. */
const cancelled = new Set<string>();

beforeAll(() => {
  backend = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const url = new URL(req.url);
      if (url.pathname === "/upload") {
        const body = await req.text();
        return new Response(`received ${body.length} bytes, expect=${req.headers.get("expect")}`);
      }
      if (url.pathname === "/endless") {
        const id = url.searchParams.get("id")!;
        return new Response(
          new ReadableStream({
            async pull(controller) {
              await Bun.sleep(50);
              controller.enqueue(new TextEncoder().encode("tick\n"));
            },
            cancel() {
              cancelled.add(id);
            },
          }),
        );
      }
      if (url.pathname === "/silent") {
        // Never responds, and records when the proxy closes the request's connection.
        const id = url.searchParams.get("id")!;
        req.signal.addEventListener("abort", () => cancelled.add(id));
        return new Promise<Response>(() => {});
      }
      return new Response("hello", { headers: { "x-kind": "page" } });
    },
  });
});

afterAll(() => backend.stop(true));

describe.each(PROXY_COMMANDS)("request lifecycle ($name)", (command) => {
  let proxy: ProxyProcess;

  beforeAll(async () => {
    proxy = await startProxy(command, ["-to", `http://127.0.0.1:${backend.port}`]);
  });

  afterAll(() => proxy.stop());

  function upload(expectValue: string) {
    const url = `https://127.0.0.1:${proxy.port}/upload`;
    const args = ["-H", `Expect: ${expectValue}`, "--data-binary", "x".repeat(5000)];
    return run(["curl", "-sk", "--max-time", "5", ...args, url]);
  }

  test("Expect: 100-continue gets an answer at once", async () => {
    const started = Date.now();

    const result = await upload("100-continue");

    expect(Date.now() - started).toBeLessThan(800);
    expect(result.stdout).toBe("received 5000 bytes, expect=null");
  });

  // NOTE: Bun.serve 1.4.5 sends "100 Continue" only for the lower-case value, so with these
  // curl waits its one-second expect timeout before it sends the body.
  test.each(["100-CONTINUE", "100-Continue"])("Expect: %s still completes", async (value) => {
    const result = await upload(value);

    expect(result.exitCode).toBe(0);
    expect(result.stdout).toBe("received 5000 bytes, expect=null");
  });

  test.each([
    ["--http1.1", "HTTP/1.1 200"],
    ["--http2", "HTTP/2 200"],
  ])("HEAD over %s keeps headers without a body", async (version, statusLine) => {
    const result = await run(["curl", "-sk", version, "-I", `https://127.0.0.1:${proxy.port}/`]);

    expect(result.stdout).toStartWith(statusLine);
    expect(result.stdout).toContain("x-kind: page\r\n");
    expect(result.stdout.endsWith("\r\n\r\n")).toBe(true);
  });

  test.each([
    ["--http2", "2"],
    ["--http1.1", "1.1"],
  ])("a client offering %s gets HTTP/%s", async (version, expected) => {
    const url = `https://127.0.0.1:${proxy.port}/`;

    const result = await run([
      "curl",
      "-sk",
      version,
      "-o",
      "/dev/null",
      "-w",
      "%{http_version}",
      url,
    ]);

    expect(result.stdout).toBe(expected);
  });

  test("client disconnect cancels the upstream", async () => {
    const id = crypto.randomUUID();
    const url = `https://127.0.0.1:${proxy.port}/endless?id=${id}`;

    const result = await run(["curl", "-sk", "--max-time", "1", url]);
    for (let waited = 0; !cancelled.has(id) && waited < 3000; waited += 50) await Bun.sleep(50);

    expect(result.exitCode).toBe(28);
    expect(cancelled.has(id)).toBe(true);
  });

  test("client disconnect cancels a waiting request", async () => {
    const id = crypto.randomUUID();
    const url = `https://127.0.0.1:${proxy.port}/silent?id=${id}`;

    const result = await run(["curl", "-sk", "--max-time", "1", url]);
    for (let waited = 0; !cancelled.has(id) && waited < 3000; waited += 50) await Bun.sleep(50);

    expect(result.exitCode).toBe(28);
    expect(cancelled.has(id)).toBe(true);
  });

  test("recovers after the backend restarts", async () => {
    const port = await findFreePort();
    const serve = (text: string) =>
      Bun.serve({ hostname: "127.0.0.1", port, fetch: () => new Response(text) });
    let restartable = serve("first");
    const restartProxy = await startProxy(command, ["-to", `127.0.0.1:${port}`]);
    const url = `https://127.0.0.1:${restartProxy.port}/`;

    try {
      const before = await run(["curl", "-sk", url]);
      await restartable.stop(true);
      restartable = serve("second");
      const after = [];
      for (let i = 0; i < 5; i++) after.push((await run(["curl", "-sk", url])).stdout);

      expect(before.stdout).toBe("first");
      expect(after).toEqual(["second", "second", "second", "second", "second"]);
    } finally {
      await restartProxy.stop();
      await restartable.stop(true);
    }
  });
});
