import { mkdirSync, mkdtempSync } from "node:fs";
import { once } from "node:events";
import { createServer, type Socket } from "node:net";
import { connect as connectTls, type TLSSocket } from "node:tls";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import packageJson from "../package.json" with { type: "json" };

const ROOT = resolve(import.meta.dir, "..");
// SSL_PROXY_BINARY lets a test run use a binary built elsewhere, as in `bun scripts/build.ts PATH`.
const BINARY = process.env.SSL_PROXY_BINARY ?? join(ROOT, "dist/ssl-proxy-linux-amd64");

/** The two ways ssl-proxy runs: from source under Bun, and as the compiled binary. */
export const PROXY_COMMANDS: { name: string; argv: string[] }[] = [
  { name: "source", argv: [process.execPath, join(ROOT, "src/index.ts")] },
  { name: "binary", argv: [BINARY] },
];

/**
 * ssl-proxy from source under Deno, with the same `deno run` flags as `npm run deno`. The
 * script's relative paths (the Deno binary and src/index.ts) are resolved from the repository.
 */
export const DENO_COMMAND: { name: string; argv: string[] } = {
  name: "deno",
  argv: packageJson.scripts.deno
    .split(" ")
    .map((word) => (word.includes("/") ? join(ROOT, word) : word)),
};

/** Creates an empty folder under test/.tmp, which git ignores. */
export function makeTempDir(prefix = "t"): string {
  const base = join(ROOT, "test/.tmp");
  mkdirSync(base, { recursive: true });
  return mkdtempSync(join(base, `${prefix}-`));
}

/**
 * Returns `args` for a test run as root. Started as root, ssl-proxy requires -user, so
 * `-user root` comes first unless the test names a user itself.
 */
export function asTestUser(args: string[], env: Record<string, string> = {}): string[] {
  const namesUser = args.some((arg) => /^--?user\b/.test(arg)) || env.SUDO_USER !== undefined;
  return process.getuid?.() === 0 && !namesUser ? ["-user", "root", ...args] : args;
}

/** Spawns ssl-proxy with piped output, a minimal environment and, by default, an empty cwd. */
function spawnProxy(
  command: { argv: string[] },
  args: string[],
  options: { env?: Record<string, string>; cwd?: string },
) {
  return Bun.spawn([...command.argv, ...asTestUser(args, options.env)], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    cwd: options.cwd ?? makeTempDir("cwd"),
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: process.env.HOME ?? "/root",
      ...options.env,
    },
  });
}

/** A running ssl-proxy process with its output so far. */
export interface ProxyProcess {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  /** The HTTPS port it listens on. */
  port: number;
  /** The plain-HTTP port, when it started a redirect listener. */
  httpPort: number | undefined;
  /** The data folder it was given. */
  dataDir: string;
  stdout(): string;
  stderr(): string;
  /** Sends SIGTERM and resolves with the exit code. */
  stop(): Promise<number>;
}

function collect(
  stream: ReadableStream<Uint8Array>,
  sink: { text: string },
  onData: () => void,
): void {
  const decoder = new TextDecoder();
  (async () => {
    for await (const chunk of stream) {
      sink.text += decoder.decode(chunk, { stream: true });
      onData();
    }
  })();
}

/**
 * Starts ssl-proxy with `args` (-from 127.0.0.1:0 and a fresh -dataDir are added unless given)
 * and waits for its listener line. Rejects with the output if it exits or takes over 15 s.
 */
export async function startProxy(
  command: { argv: string[] },
  args: string[],
  options: { env?: Record<string, string>; cwd?: string } = {},
): Promise<ProxyProcess> {
  const fullArgs = [...args];
  if (!args.some((arg) => /^--?from\b/.test(arg))) fullArgs.push("-from", "127.0.0.1:0");
  let dataDir = args[args.findIndex((arg) => /^--?dataDir$/.test(arg)) + 1] ?? "";
  if (!args.some((arg) => /^--?dataDir\b/.test(arg)) && !options.env?.SSL_PROXY_DATA_DIR) {
    dataDir = makeTempDir("data");
    fullArgs.push("-dataDir", dataDir);
  }
  const proc = spawnProxy(command, fullArgs, options);
  const out = { text: "" };
  const err = { text: "" };
  const ready = Promise.withResolvers<void>();
  // The warning of -user root goes to stderr, which is read apart from stdout, so a test could
  // otherwise see it arrive later, among the lines of what it tests.
  const warnsOfRoot = asTestUser(fullArgs, options.env) !== fullArgs;
  const check = () => {
    if (
      /^https:\/\/\S+ -> /m.test(out.text) &&
      (!fullArgs.some((a) => /redirectHTTP/.test(a)) ||
        /^http:\/\/\S+ -> redirect/m.test(out.text)) &&
      (!warnsOfRoot || /^warning: serving as root/m.test(err.text))
    )
      ready.resolve();
  };
  collect(proc.stdout, out, check);
  collect(proc.stderr, err, check);
  const timer = setTimeout(
    () =>
      ready.reject(
        new Error(`ssl-proxy did not start in 15 s\nstdout:\n${out.text}\nstderr:\n${err.text}`),
      ),
    15_000,
  );
  proc.exited.then((code) =>
    ready.reject(
      new Error(`ssl-proxy exited with ${code}\nstdout:\n${out.text}\nstderr:\n${err.text}`),
    ),
  );
  try {
    await ready.promise;
  } finally {
    clearTimeout(timer);
  }
  const port = Number(/^https:\/\/[^\s]+:(\d+) -> /m.exec(out.text)![1]);
  const httpMatch = /^http:\/\/[^\s]+:(\d+) -> redirect/m.exec(out.text);
  return {
    proc,
    port,
    httpPort: httpMatch ? Number(httpMatch[1]) : undefined,
    dataDir,
    stdout: () => out.text,
    stderr: () => err.text,
    async stop() {
      proc.kill("SIGTERM");
      return proc.exited;
    },
  };
}

/** Runs ssl-proxy to completion (it is expected to exit by itself) and returns its exit code and output. */
export async function runToExit(
  command: { argv: string[] },
  args: string[],
  options: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {},
) {
  const proc = spawnProxy(command, args, options);
  const timer = setTimeout(() => proc.kill("SIGKILL"), options.timeoutMs ?? 15_000);
  const [exitCode, stdout, stderr] = await Promise.all([
    proc.exited,
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
  ]);
  clearTimeout(timer);
  return { exitCode, stdout, stderr };
}

/** Runs a command such as curl or openssl and returns its exit code and output. */
export async function run(argv: string[], options: { stdin?: string; timeoutMs?: number } = {}) {
  const proc = Bun.spawn(argv, {
    stdin: options.stdin === undefined ? "ignore" : new TextEncoder().encode(options.stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer = setTimeout(() => proc.kill("SIGKILL"), options.timeoutMs ?? 30_000);
  const [exitCode, stdout, stderr] = await Promise.all([
    proc.exited,
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
  ]);
  clearTimeout(timer);
  return { exitCode, stdout, stderr };
}

/**
 * Opens a TLS connection to 127.0.0.1:`port` without checking the certificate, offering only
 * HTTP/1.1 by default, and resolves once the handshake is done.
 */
export async function openTls(port: number, alpn: string[] = ["http/1.1"]): Promise<TLSSocket> {
  const socket = connectTls({
    host: "127.0.0.1",
    port,
    rejectUnauthorized: false,
    ALPNProtocols: alpn,
  });
  await once(socket, "secureConnect");
  return socket;
}

/** Returns the SHA-256 fingerprint of the certificate served on a new connection to `port`. */
export async function servedFingerprint(port: number): Promise<string> {
  const socket = await openTls(port);
  const fingerprint = socket.getPeerCertificate().fingerprint256;
  socket.destroy();
  return fingerprint;
}

/** Returns a TCP port on 127.0.0.1 that was free a moment ago. */
export async function findFreePort(): Promise<number> {
  // Ports from the kernel's ephemeral range (32768-60999 on Linux) can be taken at any moment
  // by an outgoing connection, which then blocks a later bind, so free ports come from below it.
  for (;;) {
    const port = 10_000 + Math.floor(Math.random() * 22_000);
    const server = createServer();
    const bound = await new Promise<boolean>((done) => {
      server.once("error", () => done(false));
      server.listen({ port, host: "127.0.0.1", exclusive: true }, () => done(true));
    });
    if (bound) {
      await new Promise((done) => server.close(done));
      return port;
    }
  }
}

/** One request as a raw-socket backend received it. */
export interface RawRequest {
  /** The request line and headers exactly as received, without the blank line. */
  head: string;
  /** The request line, as in "GET /a//b HTTP/1.1". */
  requestLine: string;
  /** Header lines in order, as [name, value] with the name's case kept. */
  headers: [string, string][];
  /** The body bytes after the head, as far as Content-Length or chunked framing says. */
  body: Buffer;
}

/** The connection that a raw-socket backend received a request on. */
export interface RawConnection {
  /** The connection's number, counting from 1 in the order they were accepted. */
  id: number;
  /** The number of requests received on this connection, the current one included. */
  requests: number;
  socket: Socket;
}

/**
 * Starts a backend on 127.0.0.1 that parses HTTP/1.1 itself, records each request's exact
 * bytes, and responds with `respond(request, connection)`: a full raw HTTP response, or
 * undefined when `respond` wrote to or closed the socket itself.
 */
export async function startRawBackend(
  respond: (request: RawRequest, connection: RawConnection) => string | Buffer | undefined = () =>
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
) {
  const requests: RawRequest[] = [];
  const sockets = new Set<Socket>();
  let accepted = 0;
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    const connection: RawConnection = { id: ++accepted, requests: 0, socket };
    let buffer = Buffer.alloc(0);
    socket.on("data", (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      while (!socket.destroyed) {
        const parsed = parseRawRequest(buffer);
        if (!parsed) break;
        buffer = buffer.subarray(parsed.consumed);
        requests.push(parsed.request);
        connection.requests += 1;
        const response = respond(parsed.request, connection);
        if (response !== undefined) socket.write(response);
      }
    });
    socket.on("error", () => {});
  });
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  return {
    port: (server.address() as { port: number }).port,
    requests,
    close() {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}

function parseRawRequest(buffer: Buffer): { request: RawRequest; consumed: number } | undefined {
  const end = buffer.indexOf("\r\n\r\n");
  if (end === -1) return undefined;
  const head = buffer.subarray(0, end).toString("latin1");
  const [requestLine, ...lines] = head.split("\r\n");
  const headers = lines.map((line) => {
    const colon = line.indexOf(":");
    return [line.slice(0, colon), line.slice(colon + 1).trim()] as [string, string];
  });
  const find = (name: string) => headers.find(([key]) => key.toLowerCase() === name)?.[1];
  let offset = end + 4;
  let body = Buffer.alloc(0);
  const length = find("content-length");
  if (find("transfer-encoding")?.toLowerCase() === "chunked") {
    const parts: Buffer[] = [];
    for (;;) {
      const lineEnd = buffer.indexOf("\r\n", offset);
      if (lineEnd === -1) return undefined;
      const size = parseInt(buffer.subarray(offset, lineEnd).toString("latin1"), 16);
      if (buffer.length < lineEnd + 2 + size + 2) return undefined;
      if (size === 0) {
        const trailerEnd = buffer.indexOf("\r\n\r\n", lineEnd);
        if (trailerEnd === -1 && buffer.subarray(lineEnd, lineEnd + 4).toString() !== "\r\n\r\n")
          return undefined;
        offset = trailerEnd === -1 ? lineEnd + 4 : trailerEnd + 4;
        break;
      }
      parts.push(buffer.subarray(lineEnd + 2, lineEnd + 2 + size));
      offset = lineEnd + 2 + size + 2;
    }
    body = Buffer.concat(parts);
  } else if (length !== undefined) {
    const size = Number(length);
    if (buffer.length < offset + size) return undefined;
    body = Buffer.from(buffer.subarray(offset, offset + size));
    offset += size;
  }
  return { request: { head, requestLine: requestLine!, headers, body }, consumed: offset };
}

/** Finds a Python 3 that can import Flask: Debian's python3-flask, or one on PATH. */
export async function findFlaskPython(): Promise<string> {
  for (const python of ["/usr/bin/python3", "python3"]) {
    const probe = await run([python, "-c", "import flask"]).catch(() => undefined);
    if (probe?.exitCode === 0) return python;
  }
  throw new Error("no python3 with Flask: install the Debian package python3-flask");
}

/** Starts test/fixtures/flask_app.py on a free port of 127.0.0.1 and waits until it responds. */
export async function startFlask() {
  return startPythonApp(await findFlaskPython(), "flask_app.py");
}

/** Starts test/fixtures/kernel_app.py, a Tornado app with Jupyter's WebSocket checks. */
export async function startKernelApp() {
  const probe = await run(["/usr/bin/python3", "-c", "import tornado"]).catch(() => undefined);
  if (probe?.exitCode !== 0) {
    throw new Error("no python3 with Tornado: install the Debian package python3-tornado");
  }
  return startPythonApp("/usr/bin/python3", "kernel_app.py");
}

/** Runs a fixture app that prints PORT=<n> once it listens, and waits for that line. */
async function startPythonApp(python: string, fixture: string) {
  const proc = Bun.spawn([python, join(ROOT, "test/fixtures", fixture)], {
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
  });
  const reader = proc.stdout.getReader();
  let text = "";
  while (!/PORT=(\d+)/.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${fixture} exited: ${await new Response(proc.stderr).text()}`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  const port = Number(/PORT=(\d+)/.exec(text)![1]);
  return { port, url: `http://127.0.0.1:${port}`, stop: () => proc.kill() };
}
