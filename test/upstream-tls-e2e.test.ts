import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createSelfSignedCertificate } from "../src/certs.ts";
import { makeTempDir, PROXY_COMMANDS, run, startProxy } from "./helpers.ts";

let backend: ReturnType<typeof Bun.serve>;
let backendCA: string;
/** An https backend on ::1 only whose certificate names localhost, trusted through its own file. */
let namedBackend: ReturnType<typeof Bun.serve>;
let namedBackendCA: string;

beforeAll(async () => {
  // A self-signed certificate is its own CA, which the tests trust through -upstreamCA.
  const pair = await createSelfSignedCertificate(["127.0.0.1"]);
  backendCA = join(makeTempDir("backend-ca"), "ca.pem");
  writeFileSync(backendCA, pair.cert);
  backend = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: pair.cert, key: pair.key },
    fetch: () => new Response("from the https backend\n"),
  });
  const named = await createSelfSignedCertificate(["localhost"]);
  namedBackendCA = join(makeTempDir("backend-ca"), "localhost.pem");
  writeFileSync(namedBackendCA, named.cert);
  namedBackend = Bun.serve({
    hostname: "::1",
    port: 0,
    tls: { cert: named.cert, key: named.key },
    fetch: (req, server) =>
      new URL(req.url).pathname === "/port"
        ? new Response(`${server.requestIP(req)?.port}\n`)
        : new Response(`localhost backend saw ${new URL(req.url).pathname}\n`),
  });
});

afterAll(() => {
  backend.stop(true);
  namedBackend.stop(true);
});

describe.each(PROXY_COMMANDS)("https:// backends ($name)", (command) => {
  const to = () => `https://127.0.0.1:${backend.port}`;

  test("rejects an untrusted backend certificate", async () => {
    const proxy = await startProxy(command, ["-to", to()]);

    const result = await run([
      "curl",
      "-sk",
      "-w",
      "\n%{http_code}",
      `https://127.0.0.1:${proxy.port}/`,
    ]);
    await proxy.stop();

    expect(result.stdout.endsWith("\n502")).toBe(true);
    expect(proxy.stderr()).toContain(`GET /: cannot reach ${to()}`);
    expect(proxy.stderr()).toContain("trust its CA with -upstreamCA FILE");
  });

  test("trusts the -upstreamCA roots", async () => {
    const proxy = await startProxy(command, ["-to", to(), "-upstreamCA", backendCA]);

    const result = await run(["curl", "-sk", `https://127.0.0.1:${proxy.port}/`]);
    await proxy.stop();

    expect(result.stdout).toBe("from the https backend\n");
  });

  test("-upstreamInsecure skips the check with a warning", async () => {
    const proxy = await startProxy(command, ["-to", to(), "-upstreamInsecure"]);

    const result = await run(["curl", "-sk", `https://127.0.0.1:${proxy.port}/`]);
    await proxy.stop();

    expect(result.stdout).toBe("from the https backend\n");
    expect(proxy.stderr()).toContain(
      "warning: -upstreamInsecure: the certificate of the https:// backend is not checked\n",
    );
  });

  test("-upstreamInsecure accepts a certificate for another name", async () => {
    // The certificate names localhost, and the proxy connects to the address ::1.
    const to = `https://[::1]:${namedBackend.port}`;
    const proxy = await startProxy(command, ["-to", to, "-upstreamInsecure"]);

    const result = await run(["curl", "-sk", `https://127.0.0.1:${proxy.port}/b`]);
    await proxy.stop();

    expect(result.stdout).toBe("localhost backend saw /b\n");
  });

  test("reuses one backend connection", async () => {
    const to = `https://localhost:${namedBackend.port}`;
    const proxy = await startProxy(command, ["-to", to, "-upstreamCA", namedBackendCA]);
    const url = `https://127.0.0.1:${proxy.port}/port`;

    const first = await run(["curl", "-sk", url]);
    const second = await run(["curl", "-sk", url]);
    await proxy.stop();

    // The backend responds with the client port of the connection that carried the request.
    expect(first.stdout).toMatch(/^\d+\n$/);
    expect(second.stdout).toBe(first.stdout);
  });

  test.each(["/a", "//a"])("checks the name of a localhost backend on ::1 for %s", async (path) => {
    const to = `https://localhost:${namedBackend.port}`;
    const trusted = await startProxy(command, ["-to", to, "-upstreamCA", namedBackendCA]);
    const untrusted = await startProxy(command, ["-to", to]);

    const good = await run(["curl", "-sk", `https://127.0.0.1:${trusted.port}${path}`]);
    const bad = await run([
      "curl",
      "-sk",
      "-w",
      "%{http_code}",
      `https://127.0.0.1:${untrusted.port}${path}`,
    ]);
    await trusted.stop();
    await untrusted.stop();

    expect(good.stdout).toBe(`localhost backend saw ${path}\n`);
    expect(bad.stdout.endsWith("502")).toBe(true);
  });
});
