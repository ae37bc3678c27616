import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createSelfSignedCertificate } from "../src/certs.ts";
import { makeTempDir, PROXY_COMMANDS, run, startProxy } from "./helpers.ts";

let backend: ReturnType<typeof Bun.serve>;
let backendCA: string;

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
});

afterAll(() => backend.stop(true));

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
});
