import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import type { Server, Subprocess } from "bun";
import packageJson from "../package.json" with { type: "json" };
import {
  PROXY_COMMANDS,
  asTestUser,
  findFreePort,
  makeTempDir,
  run,
  runToExit,
  startProxy,
  type ProxyProcess,
} from "./helpers.ts";

/** The DNS name in the test certificate, given to -domain. */
const DOMAIN = "app.example.test";

/** One way of writing a flag on the command line. */
interface FlagForm {
  name: string;
  /** Writes a flag that takes a value. */
  write(flag: string, value: string): string[];
  /** Writes a boolean flag that is switched on. */
  enable(flag: string): string[];
}

const FLAG_FORMS: FlagForm[] = [
  {
    name: "-flag value",
    write: (flag, value) => [`-${flag}`, value],
    enable: (flag) => [`-${flag}`],
  },
  {
    name: "-flag=value",
    write: (flag, value) => [`-${flag}=${value}`],
    enable: (flag) => [`-${flag}=true`],
  },
  {
    name: "--flag value",
    write: (flag, value) => [`--${flag}`, value],
    enable: (flag) => [`--${flag}`],
  },
  {
    name: "--flag=value",
    write: (flag, value) => [`--${flag}=${value}`],
    enable: (flag) => [`--${flag}=true`],
  },
];

/**
 * Starts a backend whose response body is the request's method, path and query. A path ending
 * in /slow waits 3 s before it responds, and one ending in /delayed waits 300 ms.
 */
function startBackend(hostname: string, tls?: { cert: string; key: string }): Server<undefined> {
  return Bun.serve({
    hostname,
    port: 0,
    ...(tls ? { tls } : {}),
    async fetch(req) {
      const url = new URL(req.url);
      if (url.pathname.endsWith("/slow")) await Bun.sleep(3000);
      if (url.pathname.endsWith("/delayed")) await Bun.sleep(300);
      return new Response(`${req.method} ${url.pathname}${url.search}`);
    },
  });
}

/** Creates a self-signed certificate for DOMAIN, 127.0.0.1 and ::1 with openssl. */
async function makeCertificate(): Promise<{ certPath: string; keyPath: string }> {
  const dir = makeTempDir("cert");
  const certPath = join(dir, "cert.pem");
  const keyPath = join(dir, "key.pem");
  const options = "-x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2";
  const result = await run([
    "openssl",
    "req",
    ...options.split(" "),
    ...["-subj", `/CN=${DOMAIN}`, "-keyout", keyPath, "-out", certPath],
    ...["-addext", `subjectAltName=DNS:${DOMAIN},IP:127.0.0.1,IP:::1`],
  ]);
  if (result.exitCode !== 0) throw new Error(`openssl failed: ${result.stderr}`);
  return { certPath, keyPath };
}

/** Tells whether `port` on `host` is free, by binding it and closing it again. */
function isPortFree(port: number, host = "127.0.0.1"): Promise<boolean> {
  const server = createServer();
  return new Promise((done) => {
    server.once("error", () => done(false));
    server.listen(port, host, () => server.close(() => done(true)));
  });
}

/** Fetches `url` with curl and returns the body. `curlArgs` replaces the default -k. */
async function curlBody(url: string, curlArgs = ["-k"]): Promise<string> {
  const result = await run(["curl", "-sg", "--max-time", "10", ...curlArgs, url]);
  return result.stdout;
}

/** Fetches `url` with curl -k and returns the status code, a space and the redirect URL. */
async function curlStatus(url: string, extraArgs: string[] = []): Promise<string> {
  const format = "%{http_code} %{redirect_url}";
  const curlArgs = ["-skg", "--max-time", "10", "-o", "/dev/null", "-w", format, ...extraArgs];
  const result = await run(["curl", ...curlArgs, url]);
  return result.stdout.trim();
}

/** A proxy started by spawnUntilListening. */
interface ListeningProxy {
  port: number;
  stdout(): string;
  stop(): Promise<number>;
}

/**
 * Starts ssl-proxy with `args` (and -user root when tests run as root) and waits for its HTTPS
 * start-up line. Unlike startProxy, it adds no -from or -dataDir and does not wait for a
 * redirect line.
 */
async function spawnUntilListening(
  command: { argv: string[] },
  args: string[],
  env: Record<string, string>,
): Promise<ListeningProxy> {
  const argv = [...command.argv, ...asTestUser(args, env)];
  const proc: Subprocess<"ignore", "pipe", "pipe"> = Bun.spawn(argv, {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    cwd: makeTempDir("cwd"),
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
  });
  let stdout = "";
  const listening = Promise.withResolvers<void>();
  (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of proc.stdout) {
      stdout += decoder.decode(chunk, { stream: true });
      if (/^https:\/\/\S+ -> /m.test(stdout)) listening.resolve();
    }
  })();
  proc.exited.then(async (code) => {
    const stderr = await new Response(proc.stderr).text();
    const output = `stdout:\n${stdout}\nstderr:\n${stderr}`;
    listening.reject(new Error(`ssl-proxy exited with ${code}\n${output}`));
  });
  const timer = setTimeout(() => proc.kill("SIGKILL"), 15_000);
  try {
    await listening.promise;
  } finally {
    clearTimeout(timer);
  }

  return {
    port: Number(/^https:\/\/\S+:(\d+) -> /m.exec(stdout)![1]),
    stdout: () => stdout,
    async stop() {
      proc.kill("SIGTERM");
      return proc.exited;
    },
  };
}

/** Returns the help entry of `-name`: its heading line and the description lines below it. */
function helpEntry(help: string, name: string): string {
  const lines = help.split("\n");
  const start = lines.findIndex((line) => new RegExp(`^\\s*-${name}\\b`).test(line));
  if (start === -1) return "";
  let end = start + 1;
  while (end < lines.length && lines[end]!.trim() !== "" && !/^\s*-\w/.test(lines[end]!)) end++;
  return lines.slice(start, end).join("\n");
}

let backend: Server<undefined>;
let ipv6Backend: Server<undefined>;
let tlsBackend: Server<undefined>;
let certificate: { certPath: string; keyPath: string };

beforeAll(async () => {
  certificate = await makeCertificate();
  backend = startBackend("127.0.0.1");
  ipv6Backend = startBackend("::1");
  tlsBackend = startBackend("127.0.0.1", {
    cert: await Bun.file(certificate.certPath).text(),
    key: await Bun.file(certificate.keyPath).text(),
  });
});

afterAll(() => {
  backend.stop(true);
  ipv6Backend.stop(true);
  tlsBackend.stop(true);
});

describe.each(PROXY_COMMANDS)("ssl-proxy ($name)", (command) => {
  describe.each(FLAG_FORMS)("with flags written $name", (form) => {
    let proxy: ProxyProcess;
    let fromPort: number;
    let stopped = false;

    beforeAll(async () => {
      fromPort = await findFreePort();
      proxy = await startProxy(command, [
        ...form.write("from", `127.0.0.1:${fromPort}`),
        ...form.write("to", `http://127.0.0.1:${backend.port}/prefix`),
        ...form.write("cert", certificate.certPath),
        ...form.write("key", certificate.keyPath),
        ...form.write("domain", DOMAIN),
        ...form.enable("redirectHTTP"),
        ...form.write("httpFrom", "127.0.0.1:0"),
        ...form.write("upstreamTimeout", "300ms"),
        ...form.write("shutdownTimeout", "7s"),
      ]);
    });

    afterAll(async () => {
      if (!stopped) await proxy.stop();
    });

    // With -domain, ssl-proxy serves only requests for that name, so curl sends it to 127.0.0.1.
    const resolveDomain = () => ["--resolve", `${DOMAIN}:${fromPort}:127.0.0.1`];

    test("listens on the -from port", async () => {
      const body = await curlBody(`https://${DOMAIN}:${fromPort}/hello`, [
        "-k",
        ...resolveDomain(),
      ]);

      expect(proxy.port).toBe(fromPort);
      expect(body).toBe("GET /prefix/hello");
    });

    test("names -to in the start-up line", () => {
      const startLine = `https://127.0.0.1:${fromPort} -> http://127.0.0.1:${backend.port}/prefix`;

      expect(proxy.stdout().split("\n")).toContain(startLine);
    });

    test("serves the -cert certificate", async () => {
      const url = `https://${DOMAIN}:${fromPort}/verified`;

      const body = await curlBody(url, ["--cacert", certificate.certPath, ...resolveDomain()]);

      expect(body).toBe("GET /prefix/verified");
    });

    test("redirects to the -domain name", async () => {
      const status = await curlStatus(`http://127.0.0.1:${proxy.httpPort}/a?b=1`);

      expect(status).toBe(`301 https://${DOMAIN}:${fromPort}/a?b=1`);
    });

    test("applies the -upstreamTimeout", async () => {
      const status = await curlStatus(`https://${DOMAIN}:${fromPort}/slow`, resolveDomain());

      expect(status).toBe("504");
    });

    test("applies the -shutdownTimeout", async () => {
      stopped = true;

      const exitCode = await proxy.stop();

      expect(exitCode).toBe(0);
      expect(proxy.stdout()).toContain("waiting up to 7s");
    });
  });

  test.concurrent.each(FLAG_FORMS)("writes to -dataDir given as $name", async (form) => {
    const dataDir = join(makeTempDir("data"), "state");
    const args = [...form.write("dataDir", dataDir), "-to", `127.0.0.1:${backend.port}`];
    const proxy = await startProxy(command, args);

    try {
      expect(proxy.stdout()).toContain(`${dataDir}/`);
      expect(readdirSync(dataDir).length).toBeGreaterThan(0);
    } finally {
      await proxy.stop();
    }
  });

  describe.concurrent("-to", () => {
    test("assumes http:// for host:port", async () => {
      const proxy = await startProxy(command, ["-to", `127.0.0.1:${backend.port}`]);

      try {
        const notices = proxy
          .stdout()
          .split("\n")
          .filter((line) => /scheme/i.test(line));
        expect(notices).toHaveLength(1);
        expect(notices[0]).toContain(`http://127.0.0.1:${backend.port}`);
        expect(proxy.stdout()).toContain(` -> http://127.0.0.1:${backend.port}\n`);
        expect(await curlBody(`https://127.0.0.1:${proxy.port}/x`)).toBe("GET /x");
      } finally {
        await proxy.stop();
      }
    });

    test("adds no notice for http://", async () => {
      const proxy = await startProxy(command, ["-to", `http://127.0.0.1:${backend.port}`]);

      try {
        expect(proxy.stdout()).not.toMatch(/scheme/i);
      } finally {
        await proxy.stop();
      }
    });

    test("reaches an IPv6 backend", async () => {
      const proxy = await startProxy(command, ["-to", `[::1]:${ipv6Backend.port}`]);

      try {
        expect(proxy.stdout()).toContain(` -> http://[::1]:${ipv6Backend.port}\n`);
        expect(await curlBody(`https://127.0.0.1:${proxy.port}/six`)).toBe("GET /six");
      } finally {
        await proxy.stop();
      }
    });

    test("reaches an https:// backend", async () => {
      const to = `https://127.0.0.1:${tlsBackend.port}`;
      // The backend's certificate is self-signed, so the proxy needs it as an extra CA.
      const env = { NODE_EXTRA_CA_CERTS: certificate.certPath };
      const proxy = await startProxy(command, ["-to", to], { env });

      try {
        expect(proxy.stdout()).toContain(` -> ${to}\n`);
        expect(proxy.stdout()).not.toMatch(/scheme/i);
        expect(await curlBody(`https://127.0.0.1:${proxy.port}/tls?q=1`)).toBe("GET /tls?q=1");
      } finally {
        await proxy.stop();
      }
    });

    test("uses the last of two", async () => {
      const args = ["-to", "http://127.0.0.1:1", "-to", `http://127.0.0.1:${backend.port}`];
      const proxy = await startProxy(command, args);

      try {
        expect(proxy.stdout()).toContain(` -> http://127.0.0.1:${backend.port}\n`);
        expect(await curlBody(`https://127.0.0.1:${proxy.port}/last`)).toBe("GET /last");
      } finally {
        await proxy.stop();
      }
    });
  });

  describe.concurrent("-from", () => {
    test.each([
      { from: "[::1]:0", startLine: /^https:\/\/\[::1\]:\d+ -> /m, curlHost: "[::1]" },
      { from: ":0", startLine: /^https:\/\/0\.0\.0\.0:\d+ -> /m, curlHost: "127.0.0.1" },
      { from: "[::]:0", startLine: /^https:\/\/\[::\]:\d+ -> /m, curlHost: "[::1]" },
    ])("accepts $from", async ({ from, startLine, curlHost }) => {
      const args = ["-from", from, "-to", `127.0.0.1:${backend.port}`];
      const proxy = await startProxy(command, args);

      try {
        expect(proxy.stdout()).toMatch(startLine);
        expect(await curlBody(`https://${curlHost}:${proxy.port}/from`)).toBe("GET /from");
      } finally {
        await proxy.stop();
      }
    });

    test("reports a port in use", async () => {
      const holder = createServer();
      await new Promise<void>((done) => holder.listen(0, "127.0.0.1", done));
      const port = (holder.address() as { port: number }).port;
      const args = ["-from", `127.0.0.1:${port}`, "-to", `127.0.0.1:${backend.port}`];

      const result = await runToExit(command, [...args, "-dataDir", makeTempDir("data")]);
      holder.close();

      expect(result.exitCode).not.toBe(0);
      expect(result.stderr.trimEnd().split("\n")).toHaveLength(1);
      expect(result.stderr).toContain(`127.0.0.1:${port}`);
      expect(result.stderr).toContain("-from");
    });
  });

  describe.concurrent("-redirectHTTP", () => {
    test.each(["-redirectHTTP=false", "--redirectHTTP=false", "-redirectHTTP=0"])(
      "%s starts no HTTP listener",
      async (flag) => {
        const httpPort = await findFreePort();
        const args = [
          flag,
          "-httpFrom",
          `127.0.0.1:${httpPort}`,
          "-from",
          "127.0.0.1:0",
          "-to",
          `127.0.0.1:${backend.port}`,
          "-dataDir",
          makeTempDir("data"),
        ];
        const proxy = await spawnUntilListening(command, args, {});

        try {
          expect(await isPortFree(httpPort)).toBe(true);
          expect(proxy.stdout()).not.toContain("redirect");
        } finally {
          await proxy.stop();
        }
      },
    );

    test("redirects on -httpFrom", async () => {
      const httpPort = await findFreePort();
      const args = ["-redirectHTTP", "-httpFrom", `127.0.0.1:${httpPort}`];
      const proxy = await startProxy(command, [...args, "-to", `127.0.0.1:${backend.port}`]);

      try {
        expect(proxy.httpPort).toBe(httpPort);
        const status = await curlStatus(`http://127.0.0.1:${httpPort}/path?q=1`);
        expect(status).toBe(`301 https://127.0.0.1:${proxy.port}/path?q=1`);
      } finally {
        await proxy.stop();
      }
    });
  });

  describe.concurrent("data folder", () => {
    test("reads SSL_PROXY_DATA_DIR", async () => {
      const envDir = join(makeTempDir("data"), "from-env");
      const env = { SSL_PROXY_DATA_DIR: envDir };
      const proxy = await startProxy(command, ["-to", `127.0.0.1:${backend.port}`], { env });

      try {
        expect(proxy.stdout()).toContain(`${envDir}/`);
        expect(readdirSync(envDir).length).toBeGreaterThan(0);
      } finally {
        await proxy.stop();
      }
    });

    test("prefers -dataDir over SSL_PROXY_DATA_DIR", async () => {
      const base = makeTempDir("data");
      const flagDir = join(base, "from-flag");
      const envDir = join(base, "from-env");
      const args = ["-dataDir", flagDir, "-to", `127.0.0.1:${backend.port}`];
      const proxy = await startProxy(command, args, { env: { SSL_PROXY_DATA_DIR: envDir } });

      try {
        expect(proxy.stdout()).toContain(`${flagDir}/`);
        expect(readdirSync(flagDir).length).toBeGreaterThan(0);
        expect(existsSync(envDir)).toBe(false);
      } finally {
        await proxy.stop();
      }
    });

    test("defaults to ~/.ssl-proxy", async () => {
      const home = makeTempDir("home");
      const args = ["-from", "127.0.0.1:0", "-to", `127.0.0.1:${backend.port}`];
      const proxy = await spawnUntilListening(command, args, { HOME: home });

      try {
        expect(proxy.stdout()).toContain(`${home}/.ssl-proxy/`);
        expect(readdirSync(join(home, ".ssl-proxy")).length).toBeGreaterThan(0);
      } finally {
        await proxy.stop();
      }
    });
  });

  test("waits out a long -upstreamTimeout", async () => {
    const args = ["-upstreamTimeout", "596h", "-to", `127.0.0.1:${backend.port}`];
    const proxy = await startProxy(command, args);

    try {
      const body = await curlBody(`https://127.0.0.1:${proxy.port}/delayed`);

      expect(body).toBe("GET /delayed");
    } finally {
      await proxy.stop();
    }
  });

  describe.concurrent("help", () => {
    const NAMES = [
      "from",
      "to",
      "cert",
      "key",
      "domain",
      "redirectHTTP",
      "httpFrom",
      "dataDir",
      "upstreamTimeout",
      "idleTimeout",
      "shutdownTimeout",
      "hsts",
      "version",
      "h",
      "help",
    ];

    test.each(["-h", "-help", "--help"])("%s prints help and exits 0", async (flag) => {
      const result = await runToExit(command, [flag]);

      expect(result.exitCode).toBe(0);
      expect(result.stderr).toBe("");
      for (const name of NAMES) {
        expect(result.stdout).toMatch(new RegExp(`(^|[\\s,])-${name}(?!\\w)`, "m"));
      }
    });

    test.each([
      ["from", "127.0.0.1:4430"],
      ["to", "http://127.0.0.1:80"],
      ["httpFrom", ":80"],
      ["dataDir", "~/.ssl-proxy"],
      ["upstreamTimeout", "60s"],
      ["idleTimeout", "120s"],
      ["shutdownTimeout", "10s"],
    ])("shows the -%s default", async (name, fallback) => {
      const result = await runToExit(command, ["-help"]);

      expect(helpEntry(result.stdout, name)).toContain(fallback);
    });
  });

  describe.concurrent("version", () => {
    test.each(["-version", "--version", "-version=true"])("%s prints the version", async (flag) => {
      const result = await runToExit(command, [flag]);

      expect(result.exitCode).toBe(0);
      expect(result.stdout.trimEnd().split("\n")).toEqual([`ssl-proxy ${packageJson.version}`]);
      expect(result.stderr).toBe("");
    });
  });

  describe.concurrent("bad input", () => {
    const BAD_INPUTS: { label: string; args: string[]; fragments: string[] }[] = [
      { label: "unknown flag", args: ["-bogus", "1"], fragments: ["-bogus", "-help"] },
      { label: "unknown --flag", args: ["--verbose"], fragments: ["-verbose"] },
      { label: "flag in wrong case", args: ["-redirecthttp"], fragments: ["-redirecthttp"] },
      { label: "missing value", args: ["-to"], fragments: ["-to"] },
      { label: "positional argument", args: ["127.0.0.1:5000"], fragments: ['"127.0.0.1:5000"'] },
      {
        label: "-from port 99999",
        args: ["-from", "127.0.0.1:99999"],
        fragments: ["-from", "99999"],
      },
      {
        label: "-from without port",
        args: ["-from=127.0.0.1"],
        fragments: ["-from", '"127.0.0.1"'],
      },
      {
        label: "-from with scheme",
        args: ["-from", "https://127.0.0.1:1"],
        fragments: ["-from", "https://"],
      },
      {
        label: "-to ftp://",
        args: ["-to", "ftp://127.0.0.1:21"],
        fragments: ["-to", "ftp://127.0.0.1:21"],
      },
      {
        label: "-to bad port",
        args: ["--to", "127.0.0.1:abc"],
        fragments: ["-to", "127.0.0.1:abc"],
      },
      // A bare port is a common slip for 127.0.0.1:5000, and the URL parser reads it as 0.0.19.136.
      { label: "-to bare port", args: ["-to", "5000"], fragments: ["-to", '"5000"'] },
      {
        label: "-httpFrom without port",
        args: ["-httpFrom", "8080"],
        fragments: ["-httpFrom", '"8080"'],
      },
      {
        label: "-domain IP address",
        args: ["-domain", "127.0.0.1"],
        fragments: ["-domain", "127.0.0.1"],
      },
      {
        label: "-domain wildcard",
        args: ["-domain=*.example.com"],
        fragments: ["-domain", "*.example.com"],
      },
      {
        label: "-upstreamTimeout 5",
        args: ["-upstreamTimeout", "5"],
        fragments: ["-upstreamTimeout", '"5"'],
      },
      {
        label: "-shutdownTimeout soon",
        args: ["--shutdownTimeout=soon"],
        fragments: ["-shutdownTimeout", '"soon"'],
      },
      {
        label: "-redirectHTTP=maybe",
        args: ["-redirectHTTP=maybe"],
        fragments: ["-redirectHTTP", "maybe"],
      },
      {
        label: "-cert without -key",
        args: ["-cert", "chain.pem"],
        fragments: ["-cert", "chain.pem", "-key"],
      },
      { label: "empty -dataDir", args: ["-dataDir="], fragments: ["-dataDir"] },
    ];

    test.each(BAD_INPUTS)(
      "rejects $label",
      async ({ args, fragments }) => {
        const port = await findFreePort();
        const dataDir = join(makeTempDir("data"), "state");
        const cwd = makeTempDir("cwd");
        const goodArgs = ["-from", `127.0.0.1:${port}`, "-to", `127.0.0.1:${backend.port}`];

        const result = await runToExit(command, [...goodArgs, "-dataDir", dataDir, ...args], {
          cwd,
          timeoutMs: 5000,
        });

        expect(result.exitCode).toBe(2);
        expect(result.stdout).toBe("");
        expect(result.stderr.trimEnd().split("\n")).toHaveLength(1);
        for (const fragment of fragments) expect(result.stderr).toContain(fragment);
        expect(await isPortFree(port)).toBe(true);
        expect(existsSync(dataDir)).toBe(false);
        expect(readdirSync(cwd)).toEqual([]);
      },
      10_000,
    );
  });
});
