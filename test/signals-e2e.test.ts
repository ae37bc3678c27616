import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { once } from "node:events";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createSelfSignedCertificate } from "../src/certs.ts";
import {
  PROXY_COMMANDS,
  makeTempDir,
  run,
  servedFingerprint,
  startProxy,
  type ProxyProcess,
} from "./helpers.ts";

const encoder = new TextEncoder();
let backend: ReturnType<typeof Bun.serve>;

beforeAll(() => {
  backend = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 60,
    fetch(req, server) {
      if (server.upgrade(req, { data: undefined })) return;
      if (new URL(req.url).pathname !== "/ticks") return new Response("ok\n");
      // Ten ticks, 300 ms apart.
      let sent = 0;
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          if (sent === 10) return controller.close();
          await Bun.sleep(300);
          sent += 1;
          controller.enqueue(encoder.encode(`tick ${sent}\n`));
        },
      });
      return new Response(body, { headers: { "content-type": "text/event-stream" } });
    },
    websocket: { message: (ws, message) => void ws.send(message) },
  });
});

afterAll(() => backend.stop(true));

/** Writes a new self-signed pair for 127.0.0.1 over `files`. */
async function writePair(files: { cert: string; key: string }): Promise<void> {
  const pair = await createSelfSignedCertificate(["127.0.0.1"]);
  writeFileSync(files.cert, pair.cert);
  writeFileSync(files.key, pair.key, { mode: 0o600 });
}

async function waitForOutput(read: () => string, text: string): Promise<void> {
  for (const started = Date.now(); !read().includes(text); await Bun.sleep(20)) {
    if (Date.now() - started > 5_000) throw new Error(`no "${text}" in:\n${read()}`);
  }
}

describe.each(PROXY_COMMANDS)("SIGHUP ($name)", (command) => {
  let files: { cert: string; key: string };
  let proxy: ProxyProcess;

  beforeAll(async () => {
    const folder = makeTempDir("reload");
    files = { cert: join(folder, "cert.pem"), key: join(folder, "key.pem") };
    await writePair(files);
    proxy = await startProxy(command, [
      "-to",
      backend.url.href,
      "-cert",
      files.cert,
      "-key",
      files.key,
    ]);
  });

  afterAll(() => proxy.stop());

  test("serves the new -cert and -key without cutting a stream in progress", async () => {
    const before = await servedFingerprint(proxy.port);
    const stream = run(["curl", "-sSk", "-N", `https://127.0.0.1:${proxy.port}/ticks`]);
    await Bun.sleep(500);

    await writePair(files);
    proxy.proc.kill("SIGHUP");
    await waitForOutput(proxy.stdout, "SIGHUP received: reloaded");
    const after = await servedFingerprint(proxy.port);

    expect(after).not.toBe(before);
    expect(proxy.stdout()).toContain(`SHA256 Fingerprint: ${after.replaceAll(":", " ")}`);
    expect((await stream).stdout).toBe(
      Array.from({ length: 10 }, (_, i) => `tick ${i + 1}\n`).join(""),
    );
    expect(proxy.proc.exitCode).toBeNull();
  });

  test("keeps serving the old pair when the new one is unusable", async () => {
    const before = await servedFingerprint(proxy.port);
    const other = await createSelfSignedCertificate(["127.0.0.1"]);
    writeFileSync(files.key, other.key); // a key that does not match -cert

    proxy.proc.kill("SIGHUP");
    await waitForOutput(proxy.stderr, "still serving the previous certificate");

    expect(await servedFingerprint(proxy.port)).toBe(before);
    expect(proxy.stderr()).toContain(`-key "${files.key}" does not match the certificate`);
    const reply = await run(["curl", "-sk", `https://127.0.0.1:${proxy.port}/`]);
    expect(reply.stdout).toBe("ok\n");
  });
});

describe.each(PROXY_COMMANDS)("shutdown with long connections ($name)", (command) => {
  test("SIGTERM closes streams and WebSockets after -shutdownTimeout and exits 0", async () => {
    const proxy = await startProxy(command, ["-to", backend.url.href, "-shutdownTimeout", "1s"]);
    const ws = new WebSocket(`wss://127.0.0.1:${proxy.port}/ws`, {
      tls: { rejectUnauthorized: false },
    });
    const closed = new Promise<number>((resolve) => (ws.onclose = (event) => resolve(event.code)));
    await new Promise((resolve) => (ws.onopen = resolve));
    const stream = run(["curl", "-sSk", "-N", `https://127.0.0.1:${proxy.port}/ticks`]);
    await Bun.sleep(400);

    const started = Date.now();
    proxy.proc.kill("SIGTERM");
    const exitCode = await proxy.proc.exited;

    expect(exitCode).toBe(0);
    expect(Date.now() - started).toBeLessThan(4_000);
    expect(await closed).toBe(1001);
    expect((await stream).exitCode).not.toBe(0);
  });
});
