import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { createSelfSignedCertificate } from "../src/certs.ts";
import { makeTempDir, PROXY_COMMANDS, run, runToExit, startProxy } from "./helpers.ts";

let backend: ReturnType<typeof Bun.serve>;
let backendURL: string;
let certFiles: { cert: string; key: string };

beforeAll(async () => {
  backend = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const delay = Number(new URL(req.url).searchParams.get("delay") ?? 0);
      await Bun.sleep(delay);
      return new Response(`done after ${delay} ms\n`);
    },
  });
  backendURL = `http://127.0.0.1:${backend.port}`;

  const folder = makeTempDir("server-certs");
  const pair = await createSelfSignedCertificate(["app.example.test", "127.0.0.1"]);
  certFiles = { cert: join(folder, "cert.pem"), key: join(folder, "key.pem") };
  writeFileSync(certFiles.cert, pair.cert);
  writeFileSync(certFiles.key, pair.key);
  // The permission test runs the proxy as nobody, which must be able to read both files.
  chmodSync(folder, 0o755);
  chmodSync(certFiles.key, 0o644);
});

afterAll(() => backend.stop(true));

function curlHead(url: string, ...args: string[]) {
  return run(["curl", "-s", "-o", "/dev/null", "-D", "-", ...args, url]);
}

describe.each(PROXY_COMMANDS)("listeners ($name)", (command) => {
  test("prints one line per listener", async () => {
    const proxy = await startProxy(command, [
      "-to",
      backendURL,
      "-redirectHTTP",
      "-httpFrom",
      "127.0.0.1:0",
    ]);
    await proxy.stop();

    expect(proxy.stdout()).toContain(`https://127.0.0.1:${proxy.port} -> ${backendURL}\n`);
    expect(proxy.stdout()).toContain(
      `http://127.0.0.1:${proxy.httpPort} -> redirect to https://<host>:${proxy.port}\n`,
    );
  });

  test("redirects HTTP to the request's host", async () => {
    const proxy = await startProxy(command, [
      "-to",
      backendURL,
      "-redirectHTTP",
      "-httpFrom",
      "127.0.0.1:0",
    ]);
    try {
      const result = await curlHead(
        `http://127.0.0.1:${proxy.httpPort}/a/b?x=1&y=%2F`,
        "-H",
        "Host: vm.example.test:8080",
      );

      expect(result.stdout).toStartWith("HTTP/1.1 301");
      expect(result.stdout).toContain(
        `Location: https://vm.example.test:${proxy.port}/a/b?x=1&y=%2F\r\n`,
      );
    } finally {
      await proxy.stop();
    }
  });

  test("redirects HTTP to the -domain name", async () => {
    const args = [
      "-to",
      backendURL,
      "-redirectHTTP",
      "-httpFrom",
      "127.0.0.1:0",
      "-domain",
      "app.example.test",
    ];
    const proxy = await startProxy(command, [
      ...args,
      "-cert",
      certFiles.cert,
      "-key",
      certFiles.key,
    ]);
    try {
      const result = await curlHead(
        `http://127.0.0.1:${proxy.httpPort}/login?next=/`,
        "-H",
        "Host: 127.0.0.1",
      );

      expect(result.stdout).toContain(
        `Location: https://app.example.test:${proxy.port}/login?next=/\r\n`,
      );
    } finally {
      await proxy.stop();
    }
  });

  test("leaves port 443 out of redirects", async () => {
    const probe = await run(["sh", "-c", "id -u"]);
    if (probe.stdout.trim() !== "0") throw new Error("this test binds port 443 and needs root");
    const proxy = await startProxy(command, [
      "-from",
      "127.0.0.1:443",
      "-to",
      backendURL,
      "-redirectHTTP",
      "-httpFrom",
      "127.0.0.1:0",
    ]);
    try {
      const result = await curlHead(
        `http://127.0.0.1:${proxy.httpPort}/x`,
        "-H",
        "Host: vm.example.test",
      );

      expect(result.stdout).toContain("Location: https://vm.example.test/x\r\n");
    } finally {
      await proxy.stop();
    }
  });

  test("rejects a port already in use", async () => {
    const blocker = createServer();
    await new Promise<void>((done) => blocker.listen(0, "127.0.0.1", done));
    const port = (blocker.address() as { port: number }).port;

    const result = await runToExit(command, [
      "-from",
      `127.0.0.1:${port}`,
      "-to",
      backendURL,
      "-dataDir",
      makeTempDir("data"),
    ]);
    blocker.close();

    expect(result.exitCode).not.toBe(0);
    expect(result.stderr.trim().split("\n")).toEqual([
      `ssl-proxy: cannot listen on 127.0.0.1:${port}: the address is already in use (stop the program using it, or choose another port with -from)`,
    ]);
  });

  test("keeps the mode of an existing -dataDir", async () => {
    const dataDir = makeTempDir("own-folder");
    chmodSync(dataDir, 0o755);

    const proxy = await startProxy(command, ["-to", backendURL, "-dataDir", dataDir]);
    await proxy.stop();

    expect(statSync(dataDir).mode & 0o777).toBe(0o755);
    expect(statSync(join(dataDir, "self-signed", "127.0.0.1")).mode & 0o777).toBe(0o700);
  });

  test("checks -cert before binding a port", async () => {
    const blocker = createServer();
    await new Promise<void>((done) => blocker.listen(0, "127.0.0.1", done));
    const httpPort = (blocker.address() as { port: number }).port;
    const missing = join(makeTempDir("missing"), "cert.pem");
    const args = ["-to", backendURL, "-redirectHTTP", "-httpFrom", `127.0.0.1:${httpPort}`];

    const result = await runToExit(command, [...args, "-cert", missing, "-key", certFiles.key]);
    blocker.close();

    // A bind first would have failed on the taken -httpFrom port instead.
    expect(result.exitCode).not.toBe(0);
    expect(result.stderr.trim()).toBe(`ssl-proxy: cannot read -cert "${missing}": no such file`);
  });

  test("checks -acmeCA before binding a port", async () => {
    const blocker = createServer();
    await new Promise<void>((done) => blocker.listen(0, "127.0.0.1", done));
    const httpPort = (blocker.address() as { port: number }).port;
    const missing = join(makeTempDir("missing"), "ca.pem");
    const args = ["-to", backendURL, "-redirectHTTP", "-httpFrom", `127.0.0.1:${httpPort}`];
    const acme = ["-domain", "a.test", "-acmeDirectory", "https://127.0.0.1:1/dir"];

    const result = await runToExit(command, [...args, ...acme, "-acmeCA", missing]);
    blocker.close();

    expect(result.exitCode).not.toBe(0);
    expect(result.stderr.trim()).toBe(`ssl-proxy: cannot read -acmeCA "${missing}": no such file`);
  });

  test("explains a privileged port without root", async () => {
    const args = [
      "-user",
      "nobody",
      "-from",
      "127.0.0.1:443",
      "-to",
      backendURL,
      "-cert",
      certFiles.cert,
      "-key",
      certFiles.key,
    ];
    const asNobody = {
      argv: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ...command.argv],
    };

    const result = await runToExit(asNobody, args, { cwd: "/tmp" });

    expect(result.exitCode).not.toBe(0);
    expect(result.stderr.trim().split("\n")).toEqual([
      "ssl-proxy: cannot listen on 127.0.0.1:443: permission denied (ports below 1024 need root: run with sudo, or grant CAP_NET_BIND_SERVICE)",
    ]);
  });
});

describe.each(PROXY_COMMANDS)("shutdown ($name)", (command) => {
  test.each(["SIGTERM", "SIGINT"] as const)("%s lets open requests finish", async (signal) => {
    const proxy = await startProxy(command, ["-to", backendURL]);
    const inFlight = run(["curl", "-sk", `https://127.0.0.1:${proxy.port}/?delay=1500`]);
    await Bun.sleep(500);

    proxy.proc.kill(signal);
    await Bun.sleep(200);
    const late = await run(["curl", "-sk", "--max-time", "2", `https://127.0.0.1:${proxy.port}/`]);
    const exitCode = await proxy.proc.exited;

    expect((await inFlight).stdout).toBe("done after 1500 ms\n");
    expect(late.exitCode).toBe(7);
    expect(exitCode).toBe(0);
  });

  test("cuts requests after -shutdownTimeout", async () => {
    const proxy = await startProxy(command, ["-to", backendURL, "-shutdownTimeout", "1s"]);
    const inFlight = run(["curl", "-sk", `https://127.0.0.1:${proxy.port}/?delay=20000`]);
    await Bun.sleep(300);

    const started = Date.now();
    proxy.proc.kill("SIGTERM");
    const exitCode = await proxy.proc.exited;
    const elapsed = Date.now() - started;

    expect(exitCode).toBe(0);
    expect(elapsed).toBeLessThan(5000);
    expect((await inFlight).exitCode).not.toBe(0);
    expect(proxy.stderr()).toContain("open requests did not finish within 1s");
  });
});
