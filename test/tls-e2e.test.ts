import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { PROXY_COMMANDS, run, startProxy, type ProxyProcess } from "./helpers.ts";

let backend: ReturnType<typeof Bun.serve>;

beforeAll(() => {
  backend = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const own = new URL(req.url).pathname === "/own-hsts";
      const headers: Record<string, string> = own
        ? { "strict-transport-security": "max-age=60" }
        : {};
      return new Response("ok\n", { headers });
    },
  });
});

afterAll(() => backend.stop(true));

/** Runs openssl s_client with `args` and returns the protocol and cipher it agreed, or "". */
async function handshake(proxy: ProxyProcess, args: string[]): Promise<string> {
  const result = await run(
    ["openssl", "s_client", "-connect", `127.0.0.1:${proxy.port}`, "-brief", ...args],
    { stdin: "" },
  );
  const protocol = /^Protocol version: (\S+)/m.exec(result.stderr)?.[1];
  const cipher = /^Ciphersuite: (\S+)/m.exec(result.stderr)?.[1];
  return protocol && cipher ? `${protocol} ${cipher}` : "";
}

function strictTransportSecurity(proxy: ProxyProcess, path: string) {
  return run([
    "curl",
    "-sk",
    "-D",
    "-",
    "-o",
    "/dev/null",
    `https://127.0.0.1:${proxy.port}${path}`,
  ]).then((result) => /^strict-transport-security: (.*)\r$/im.exec(result.stdout)?.[1]);
}

describe.each(PROXY_COMMANDS)("TLS ($name)", (command) => {
  let proxy: ProxyProcess;
  let hstsProxy: ProxyProcess;

  beforeAll(async () => {
    proxy = await startProxy(command, ["-to", backend.url.href]);
    hstsProxy = await startProxy(command, ["-to", backend.url.href, "-hsts"]);
  });

  afterAll(async () => {
    await proxy.stop();
    await hstsProxy.stop();
  });

  test.each([
    ["TLS 1.0", ["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"]],
    ["TLS 1.1", ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]],
    ["a CBC suite", ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"]],
    ["a CBC suite with SHA-256", ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"]],
  ])("refuses %s", async (_, args) => {
    expect(await handshake(proxy, args)).toBe("");
  });

  test.each([
    [
      ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
      "TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256",
    ],
    [
      ["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
      "TLSv1.2 ECDHE-ECDSA-CHACHA20-POLY1305",
    ],
    [["-tls1_3"], "TLSv1.3 TLS_AES_256_GCM_SHA384"],
  ])("accepts %p", async (args, agreed) => {
    expect(await handshake(proxy, args)).toBe(agreed);
  });

  test("sends no Strict-Transport-Security without -hsts", async () => {
    expect(await strictTransportSecurity(proxy, "/")).toBeUndefined();
  });

  test("-hsts adds Strict-Transport-Security for one year", async () => {
    expect(await strictTransportSecurity(hstsProxy, "/")).toBe("max-age=31536000");
  });

  test("-hsts keeps the backend's own Strict-Transport-Security", async () => {
    expect(await strictTransportSecurity(hstsProxy, "/own-hsts")).toBe("max-age=60");
  });
});
