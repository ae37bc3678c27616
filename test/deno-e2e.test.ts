import {
  afterAll,
  afterEach,
  beforeAll,
  describe,
  expect,
  setDefaultTimeout,
  test,
} from "bun:test";
import { gzipSync } from "node:zlib";
import {
  DENO_COMMAND,
  findFreePort,
  run,
  runToExit,
  startFlask,
  startProxy,
  startRawBackend,
  type ProxyProcess,
} from "./helpers.ts";
import { makeFixtures, opensslFingerprint, type Fixtures } from "./openssl.ts";

setDefaultTimeout(20_000);

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/;
const PRINTED_FINGERPRINT = /SHA256 Fingerprint: ([0-9A-F]{2}(?: [0-9A-F]{2}){31})$/m;
const GZIP_TEXT = "compressed hello ".repeat(100);
/** The pause between the two pieces of the streamed response. */
const STREAM_GAP_MS = 1500;

/** Runs curl with -k, which accepts the proxy's self-signed certificate. */
function curl(...args: string[]) {
  return run(["curl", "-sS", "-k", ...args]);
}

/** Returns the leaf certificate that the TLS server on 127.0.0.1:`port` sends. */
async function fetchServedLeaf(port: number): Promise<string> {
  const argv = ["openssl", "s_client", "-connect", `127.0.0.1:${port}`];
  const { stdout } = await run(argv, { stdin: "" });
  const leaf = PEM_CERTIFICATE.exec(stdout)?.[0];
  if (!leaf) throw new Error(`no certificate served on port ${port}`);
  return leaf;
}

/** Stops what one test started, even when the test failed before stopping it itself. */
const cleanups: (() => unknown)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Starts ssl-proxy under Deno on free loopback ports, with a fresh data folder. */
async function startDenoProxy(args: string[]): Promise<ProxyProcess> {
  return startProxy(DENO_COMMAND, ["-from", `127.0.0.1:${await findFreePort()}`, ...args]);
}

/** Starts ssl-proxy under Deno for the current test and stops it after the test. */
async function launchDenoProxy(args: string[]): Promise<ProxyProcess> {
  const proxy = await startDenoProxy(args);
  cleanups.push(() => proxy.stop());
  return proxy;
}

/**
 * Starts a Bun.serve backend with a streamed response, a body compressed only when the request
 * accepts gzip, an upload counter and a WebSocket echo that picks the last subprotocol offered.
 */
function startBunBackend() {
  const seen = { acceptEncoding: [] as (string | null)[], cookies: [] as (string | null)[] };
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req, server) {
      const path = new URL(req.url).pathname;
      if (path === "/stream") return streamedResponse();
      if (path === "/negotiated") {
        const accepted = req.headers.get("accept-encoding");
        seen.acceptEncoding.push(accepted);
        if (!accepted?.includes("gzip")) return new Response(GZIP_TEXT);
        return new Response(gzipSync(GZIP_TEXT), { headers: { "content-encoding": "gzip" } });
      }
      if (path === "/upload") return new Response(`received ${(await req.bytes()).length}`);
      seen.cookies.push(req.headers.get("cookie"));
      const offered = (req.headers.get("sec-websocket-protocol") ?? "").split(",");
      const chosen = offered.at(-1)?.trim();
      const headers = chosen ? { "sec-websocket-protocol": chosen } : {};
      if (server.upgrade(req, { data: undefined, headers })) return undefined;
      return new Response("not found", { status: 404 });
    },
    websocket: {
      message(ws, message) {
        if (message === "close-4001") ws.close(4001, "backend says bye");
        else ws.send(message);
      },
    },
  });
  return { url: `http://127.0.0.1:${server.port}`, seen, stop: () => server.stop(true) };
}

function streamedResponse(): Response {
  const encoder = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      controller.enqueue(encoder.encode("first\n"));
      await Bun.sleep(STREAM_GAP_MS);
      controller.enqueue(encoder.encode("second\n"));
      controller.close();
    },
  });
  return new Response(body, { headers: { "content-type": "text/plain" } });
}

/** Opens a WebSocket through the proxy and collects what arrives, once it is open. */
async function openWebSocket(port: number, protocols: string[]) {
  const ws = new WebSocket(`wss://127.0.0.1:${port}/socket`, {
    protocols,
    headers: { cookie: "session=abc123" },
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
    ws.onerror = () => reject(new Error("the WebSocket through the proxy did not open"));
  });
  return { ws, messages, closed };
}

async function waitFor(condition: () => boolean, ms = 3000): Promise<void> {
  for (const started = Date.now(); !condition(); await Bun.sleep(10)) {
    if (Date.now() - started > ms) throw new Error("condition not met in time");
  }
}

describe("ssl-proxy under Deno in front of Flask", () => {
  let flask: Awaited<ReturnType<typeof startFlask>>;
  let proxy: ProxyProcess;

  beforeAll(async () => {
    flask = await startFlask();
    const httpFrom = `127.0.0.1:${await findFreePort()}`;
    proxy = await startDenoProxy(["-to", flask.url, "-redirectHTTP", "-httpFrom", httpFrom]);
  });

  afterAll(async () => {
    await proxy?.stop();
    flask?.stop();
  });

  test("prints the fingerprint of the served certificate", async () => {
    const served = await fetchServedLeaf(proxy.port);

    const printed = PRINTED_FINGERPRINT.exec(proxy.stdout())?.[1];

    expect(printed).toBe(await opensslFingerprint(served));
  });

  test.each(["--http1.1", "--http2"])("forwards Host and X-Forwarded over %s", async (version) => {
    const url = `https://127.0.0.1:${proxy.port}/a//b%2Fc?x=1&y=2`;

    const result = await curl(
      version,
      "-H",
      "Host: app.example.test",
      "-H",
      "X-Forwarded-For: 203.0.113.9",
      url,
    );
    const seen = JSON.parse(result.stdout);

    expect(seen.raw_uri).toBe("/a//b%2Fc?x=1&y=2");
    expect(seen.headers["Host"]).toBe("app.example.test");
    expect(seen.headers["X-Forwarded-For"]).toBe("203.0.113.9, 127.0.0.1");
    expect(seen.headers["X-Forwarded-Proto"]).toBe("https");
    expect(seen.headers["X-Forwarded-Host"]).toBe("app.example.test");
    expect(seen.headers["X-Forwarded-Port"]).toBe(String(proxy.port));
  });

  test("drops hop-by-hop request headers", async () => {
    const url = `https://127.0.0.1:${proxy.port}/echo`;
    const headers = ["-H", "Connection: keep-alive, X-Secret", "-H", "X-Secret: 1"];

    const result = await curl("--http1.1", ...headers, "-H", "X-Kept: 2", url);
    const seen = JSON.parse(result.stdout);

    expect(seen.headers["X-Secret"]).toBeUndefined();
    expect(seen.headers["X-Kept"]).toBe("2");
  });

  test("forwards a POST body", async () => {
    const url = `https://127.0.0.1:${proxy.port}/form`;

    const result = await curl("--data-binary", "name=value&n=1", url);
    const seen = JSON.parse(result.stdout);

    expect(seen.method).toBe("POST");
    expect(seen.body).toBe("name=value&n=1");
  });

  test("keeps each Set-Cookie header", async () => {
    const result = await curl(
      "-D",
      "-",
      "-o",
      "/dev/null",
      `https://127.0.0.1:${proxy.port}/cookies`,
    );

    const cookies = result.stdout.split("\r\n").filter((line) => /^set-cookie:/i.test(line));

    expect(cookies).toHaveLength(3);
    expect(cookies[0]).toContain("a=value-a");
    expect(cookies[2]).toContain("c=value-c");
  });

  test("passes redirects on without following them", async () => {
    const format = "%{http_code} %{redirect_url}";

    const result = await curl(
      "-o",
      "/dev/null",
      "-w",
      format,
      `https://127.0.0.1:${proxy.port}/redirect`,
    );

    expect(result.stdout).toBe(`302 https://127.0.0.1:${proxy.port}/hello`);
  });

  test("passes a gzip body that the backend always sends", async () => {
    const url = `https://127.0.0.1:${proxy.port}/gzip`;

    const decoded = await curl("--compressed", url);
    const head = await curl("-D", "-", "-o", "/dev/null", url);

    expect(decoded.stdout).toBe(GZIP_TEXT);
    expect(head.stdout.toLowerCase()).toContain("content-encoding: gzip\r\n");
  });

  test("asks Flask for an uncompressed body", async () => {
    const result = await curl("--compressed", `https://127.0.0.1:${proxy.port}/echo`);
    const seen = JSON.parse(result.stdout);

    expect(seen.headers["Accept-Encoding"]).toBe("identity");
  });

  test("redirects plain HTTP to HTTPS", async () => {
    const url = `http://127.0.0.1:${proxy.httpPort}/login?next=%2F`;

    const result = await curl("-D", "-", "-o", "/dev/null", "-H", "Host: vm.example.test", url);

    expect(result.stdout).toStartWith("HTTP/1.1 301");
    expect(result.stdout).toContain(
      `location: https://vm.example.test:${proxy.port}/login?next=%2F\r\n`,
    );
  });
});

describe("ssl-proxy under Deno in front of Bun.serve", () => {
  let backend: ReturnType<typeof startBunBackend>;
  let proxy: ProxyProcess;

  beforeAll(async () => {
    backend = startBunBackend();
    proxy = await startDenoProxy(["-to", backend.url]);
  });

  afterAll(async () => {
    await proxy?.stop();
    await backend?.stop();
  });

  test("streams the response as it is sent", async () => {
    const started = performance.now();
    const res = await fetch(`https://127.0.0.1:${proxy.port}/stream`, {
      tls: { rejectUnauthorized: false },
    });
    const reader = res.body!.getReader();

    const first = await reader.read();
    const firstMs = performance.now() - started;
    let rest = "";
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
      rest += new TextDecoder().decode(chunk.value);
    }

    expect(new TextDecoder().decode(first.value)).toBe("first\n");
    expect(firstMs).toBeLessThan(STREAM_GAP_MS - 300);
    expect(rest).toBe("second\n");
  });

  test("serves a negotiated body uncompressed", async () => {
    backend.seen.acceptEncoding.length = 0;
    const url = `https://127.0.0.1:${proxy.port}/negotiated`;

    const result = await curl("--compressed", "-D", "-", url);

    expect(backend.seen.acceptEncoding).toEqual(["identity"]);
    expect(result.stdout.toLowerCase()).not.toContain("content-encoding");
    expect(result.stdout.endsWith(`\r\n\r\n${GZIP_TEXT}`)).toBe(true);
  });

  test("answers keep-alive requests without delay", async () => {
    const url = `https://127.0.0.1:${proxy.port}/negotiated`;
    const urls = Array.from({ length: 10 }, () => url);

    const started = performance.now();
    const result = await curl("--http1.1", ...urls);
    const elapsedMs = performance.now() - started;

    expect(result.stdout).toBe(GZIP_TEXT.repeat(10));
    // Ten responses that each waited about 40 ms would take over 400 ms.
    expect(elapsedMs).toBeLessThan(350);
  });

  test("forwards a 3 MB upload intact", async () => {
    const body = "x".repeat(3 * 1024 * 1024);
    const url = `https://127.0.0.1:${proxy.port}/upload`;

    const result = await run(["curl", "-sS", "-k", "--data-binary", "@-", url], { stdin: body });

    expect(result.stdout).toBe(`received ${body.length}`);
  });

  test("relays WebSocket messages both ways", async () => {
    backend.seen.cookies.length = 0;
    const { ws, messages } = await openWebSocket(proxy.port, ["first", "second"]);

    ws.send("hello");
    ws.send(new Uint8Array([0, 1, 2, 255]));
    await waitFor(() => messages.length === 2);
    ws.close();

    expect(ws.protocol).toBe("second");
    expect(backend.seen.cookies).toEqual(["session=abc123"]);
    expect(messages[0]).toBe("hello");
    expect([...new Uint8Array(messages[1] as ArrayBuffer)]).toEqual([0, 1, 2, 255]);
  });

  test("passes the backend's WebSocket close code", async () => {
    const { ws, closed } = await openWebSocket(proxy.port, []);

    ws.send("close-4001");

    expect(await closed).toEqual({ code: 4001, reason: "backend says bye" });
  });
});

describe("ssl-proxy under Deno with its own certificate", () => {
  let fixtures: Fixtures;

  beforeAll(async () => {
    fixtures = await makeFixtures("deno-certs", { expiredIssuer: "root" });
  });

  test("serves the -cert chain", async () => {
    const backend = await startRawBackend();
    cleanups.push(() => backend.close());
    const proxy = await launchDenoProxy([
      ...["-to", `127.0.0.1:${backend.port}`, "-cert", fixtures.chain, "-key", fixtures.leafKey],
    ]);
    const resolve = `localhost:${proxy.port}:127.0.0.1`;

    const result = await run([
      ...["curl", "-sS", "--cacert", fixtures.root, "--resolve", resolve],
      `https://localhost:${proxy.port}/`,
    ]);
    const printed = PRINTED_FINGERPRINT.exec(proxy.stdout())?.[1];
    await proxy.stop();

    expect(result.stdout).toBe("ok");
    expect(printed).toBe(await opensslFingerprint(await Bun.file(fixtures.leaf).text()));
  });

  test("redirects HTTP to the -domain name", async () => {
    const files = ["-cert", fixtures.chain, "-key", fixtures.leafKey];
    const httpFrom = `127.0.0.1:${await findFreePort()}`;
    const redirect = ["-domain", "app.example.test", "-redirectHTTP", "-httpFrom", httpFrom];
    const proxy = await launchDenoProxy(["-to", "127.0.0.1:9", ...files, ...redirect]);

    const result = await curl("-D", "-", "-o", "/dev/null", `http://${httpFrom}/login?next=%2F`);

    expect(result.stdout).toStartWith("HTTP/1.1 301");
    expect(result.stdout).toContain(
      `location: https://app.example.test:${proxy.port}/login?next=%2F\r\n`,
    );
  });

  test("rejects a -key of another certificate", async () => {
    const args = ["-cert", fixtures.chain, "-key", fixtures.otherKey, "-to", "127.0.0.1:9"];

    const result = await runToExit(DENO_COMMAND, args);

    expect(result.exitCode).toBe(1);
    expect(result.stderr).toStartWith(`ssl-proxy: -key "${fixtures.otherKey}" does not match`);
    expect(result.stderr.trim().split("\n")).toHaveLength(1);
  });
});

describe("ssl-proxy under Deno in front of an https:// backend", () => {
  let backend: ReturnType<typeof Bun.serve>;
  let fixtures: Fixtures;

  beforeAll(async () => {
    fixtures = await makeFixtures("deno-upstream", { expiredIssuer: "root" });
    backend = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: Bun.file(fixtures.chain), key: Bun.file(fixtures.leafKey) },
      fetch(req, server) {
        if (server.upgrade(req, { data: undefined })) return undefined;
        return new Response("from the https backend\n");
      },
      websocket: { message: (ws, message) => void ws.send(message) },
    });
  });

  afterAll(() => backend?.stop(true));

  test("rejects an untrusted backend certificate", async () => {
    const proxy = await launchDenoProxy(["-to", `https://127.0.0.1:${backend.port}`]);

    const result = await curl("-w", "\n%{http_code}", `https://127.0.0.1:${proxy.port}/`);
    await proxy.stop();

    expect(result.stdout.endsWith("\n502")).toBe(true);
    expect(proxy.stderr()).toContain("trust its CA with -upstreamCA FILE");
  });

  test("trusts the -upstreamCA roots for fetch and WebSocket", async () => {
    const to = `https://127.0.0.1:${backend.port}`;
    const proxy = await launchDenoProxy(["-to", to, "-upstreamCA", fixtures.root]);

    const result = await curl(`https://127.0.0.1:${proxy.port}/`);
    const { ws, messages } = await openWebSocket(proxy.port, []);
    ws.send("over wss");
    await waitFor(() => messages.length === 1);
    ws.close();
    await proxy.stop();

    expect(result.stdout).toBe("from the https backend\n");
    expect(messages).toEqual(["over wss"]);
  });
});

describe("ssl-proxy under Deno with a failing backend or body", () => {
  test("answers 502 when the backend is down", async () => {
    const proxy = await launchDenoProxy(["-to", `127.0.0.1:${await findFreePort()}`]);

    const result = await curl(
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      `https://127.0.0.1:${proxy.port}/`,
    );
    const exitCode = await proxy.stop();

    expect(result.stdout).toBe("502");
    expect(proxy.stderr()).toContain("connection refused");
    expect(exitCode).toBe(0);
  });

  test("answers 504 past -upstreamTimeout", async () => {
    const flask = await startFlask();
    cleanups.push(() => flask.stop());
    const proxy = await launchDenoProxy(["-to", flask.url, "-upstreamTimeout", "500ms"]);
    const url = `https://127.0.0.1:${proxy.port}/slow/3.0`;

    const started = performance.now();
    const result = await curl("-o", "/dev/null", "-w", "%{http_code}", url);
    const elapsedMs = performance.now() - started;
    await proxy.stop();

    expect(result.stdout).toBe("504");
    expect(elapsedMs).toBeLessThan(2500);
    expect(proxy.stderr()).toContain("sent no response headers in time");
  });

  // NOTE: a 413 sent before the body is read reaches an HTTP/2 client as a stream error most of
  // the time, as under Bun, so the uploads go over HTTP/1.1 with Expect: 100-continue.
  test("answers 413 past -maxBodySize", async () => {
    const backend = startBunBackend();
    cleanups.push(() => backend.stop());
    const proxy = await launchDenoProxy(["-to", backend.url, "-maxBodySize", "1KB"]);
    const url = `https://127.0.0.1:${proxy.port}/upload`;
    const upload = (headers: string[], size: number) =>
      curl(
        "--http1.1",
        "-H",
        "Expect: 100-continue",
        ...headers,
        "--data-binary",
        "x".repeat(size),
        "-w",
        "\n%{http_code}",
        url,
      );

    const small = await upload([], 1000);
    const declared = await upload([], 5000);
    const chunked = await upload(["-H", "Transfer-Encoding: chunked"], 5000);
    await proxy.stop();

    expect(small.stdout).toBe("received 1000\n200");
    expect(declared.stdout).toBe("Payload Too Large\n\n413");
    expect(chunked.stdout).toBe("Payload Too Large\n\n413");
    // Tests run as root, so the only expected line is the -user root warning.
    expect(proxy.stderr().replace(/^warning: serving as root .*\n/m, "")).toBe("");
  });
});

describe("ssl-proxy under Deno rejects what it cannot do", () => {
  test.each([
    ["-domain", ["-domain", "vm.example.test"]],
    ["-upstreamInsecure", ["-upstreamInsecure", "-to", "https://127.0.0.1:9"]],
  ])("%s exits with one line", async (flag, args) => {
    const from = `127.0.0.1:${await findFreePort()}`;

    const result = await runToExit(DENO_COMMAND, ["-from", from, ...args]);

    expect(result.exitCode).toBe(2);
    expect(result.stderr).toStartWith(`ssl-proxy: ${flag} `);
    expect(result.stderr.trim().split("\n")).toHaveLength(1);
  });
});
