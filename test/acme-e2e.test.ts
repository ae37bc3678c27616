// End-to-end tests of -domain: ssl-proxy gets its certificate from Pebble, a real ACME CA on
// loopback (test/pebble.ts). Every proxy gets -acmeDirectory and -acmeCA, so no test reaches a
// public CA.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync, statSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { dirname, join } from "node:path";
import { connect, type PeerCertificate, type TLSSocket } from "node:tls";
import {
  PROXY_COMMANDS,
  makeTempDir,
  run,
  runToExit,
  startProxy,
  type ProxyProcess,
} from "./helpers.ts";
import { startPebble, type Pebble, type PebbleOptions } from "./pebble.ts";

setDefaultTimeout(60_000);

const BACKEND_PAGE = "page from the backend\n";
// Pebble's validity period for the renewal test, in seconds. ssl-proxy renews when a third of
// the lifetime remains, so the renewal starts about 20 s after the certificate is issued.
const SHORT_VALIDITY_SECONDS = 30;
// The gap between two requests of one client in the renewal test.
const REQUEST_INTERVAL_MS = 300;
// How long both clients keep sending after the renewal, so that the swap is behind them.
const AFTER_RENEWAL_MS = 3_000;
// The max time from the printed renewal time until the proxy prints that it renewed.
const RENEWAL_DEADLINE_MS = 20_000;
// The max wait for the proxy to exit by itself after validation fails.
const VALIDATION_FAILURE_TIMEOUT_MS = 120_000;
const PRINTED_CERTIFICATE = /^certificate (\S+) \((new|stored)\) for /m;
const PRINTED_RENEWAL_TIME = /, renewal at (\S+)$/m;
const PRINTED_RENEWAL = /^certificate renewed: serial ([0-9A-Fa-f]+),/m;

let backend: ReturnType<typeof Bun.serve>;
const sharedPebbles: SharedPebble[] = [];

/**
 * A Pebble for the tests of one describe block. Each proxy under test listens on the Pebble's
 * validation ports, and orderCount() counts the orders of every client, so the tests of a block
 * take turns through `use`. Tests of other blocks run meanwhile, since every test is concurrent.
 */
class SharedPebble {
  #pebble: Pebble | undefined;
  #turn: Promise<unknown> = Promise.resolve();

  constructor(readonly options: PebbleOptions = {}) {
    sharedPebbles.push(this);
  }

  async start(): Promise<void> {
    this.#pebble = await startPebble(this.options);
  }

  stop(): Promise<void> {
    return this.#pebble?.stop() ?? Promise.resolve();
  }

  /** Runs `body` once the tests before it in the queue are done with this Pebble. */
  use<T>(body: (pebble: Pebble) => Promise<T>): Promise<T> {
    const next = this.#turn.then(() => {
      if (!this.#pebble) throw new Error("the Pebble of this describe block did not start");
      return body(this.#pebble);
    });
    this.#turn = next.catch(() => {});
    return next;
  }
}

beforeAll(async () => {
  backend = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const url = new URL(req.url);
      if (url.pathname !== "/stream") return new Response(BACKEND_PAGE);
      // Sends "tick <i>" lines REQUEST_INTERVAL_MS apart, `count` of them, then ends.
      const count = Number(url.searchParams.get("count"));
      let sent = 0;
      return new Response(
        new ReadableStream({
          async pull(controller) {
            if (sent === count) return controller.close();
            await Bun.sleep(REQUEST_INTERVAL_MS);
            controller.enqueue(new TextEncoder().encode(`tick ${sent++}\n`));
          },
        }),
      );
    },
  });
  await Promise.all(sharedPebbles.map((shared) => shared.start()));
});

afterAll(async () => {
  backend?.stop(true);
  await Promise.all(sharedPebbles.map((shared) => shared.stop()));
});

/** Returns the ssl-proxy flags that get certificates for `domains` from `pebble` and no other CA. */
function acmeArgs(pebble: Pebble, domains: string, dataDir: string): string[] {
  return [
    ["-from", `127.0.0.1:${pebble.tlsPort}`],
    ["-httpFrom", `127.0.0.1:${pebble.httpPort}`],
    ["-domain", domains],
    ["-acmeDirectory", pebble.directoryUrl],
    ["-acmeCA", pebble.caFile],
    ["-to", `http://127.0.0.1:${backend.port}`],
    ["-dataDir", dataDir],
  ].flat();
}

/** Starts ssl-proxy for `domains` with `pebble` as its CA, and waits until it serves HTTPS. */
function startAcmeProxy(
  command: { argv: string[] },
  pebble: Pebble,
  domains: string,
  dataDir: string,
): Promise<ProxyProcess> {
  return startProxy(command, acmeArgs(pebble, domains, dataDir));
}

/** Runs `body` with a started proxy, and stops the proxy afterwards even when `body` throws. */
async function withAcmeProxy<T>(
  command: { argv: string[] },
  pebble: Pebble,
  domains: string,
  dataDir: string,
  body: (proxy: ProxyProcess) => Promise<T>,
): Promise<T> {
  const proxy = await startAcmeProxy(command, pebble, domains, dataDir);
  try {
    return await body(proxy);
  } finally {
    await proxy.stop();
  }
}

/** Requests https://name:port/ with curl, verifying the certificate against Pebble's root. */
function curlWithRoot(pebble: Pebble, name: string, port: number) {
  const url = `https://${name}:${port}/`;
  const resolve = `${name}:${port}:127.0.0.1`;
  return run(["curl", "-sS", "--cacert", pebble.rootFile(), "--resolve", resolve, url]);
}

/** Opens a TLS connection to the proxy that verifies the certificate for `servername` against `ca`. */
function connectVerified(port: number, servername: string, ca: string): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port, servername, ca });
    socket.once("secureConnect", () => resolve(socket));
    socket.once("error", reject);
  });
}

/** Returns the leaf certificate that the proxy serves for `servername`, verified against `ca`. */
async function readServedCertificate(
  port: number,
  servername: string,
  ca: string,
): Promise<PeerCertificate> {
  const socket = await connectVerified(port, servername, ca);
  const certificate = socket.getPeerCertificate();
  socket.destroy();
  return certificate;
}

/** Normalizes a serial number, so that one from node:tls and one from the proxy's log compare equal. */
function normalizeSerial(serial: string): string {
  return serial.toUpperCase().replace(/^0+/, "");
}

/** Finds the files and folders of the stored certificate from the path that ssl-proxy printed. */
function storedFiles(proxy: ProxyProcess) {
  const certPath = PRINTED_CERTIFICATE.exec(proxy.stdout())?.[1];
  if (certPath === undefined) throw new Error(`no certificate line in:\n${proxy.stdout()}`);
  const certFolder = dirname(certPath);
  const caFolder = dirname(certFolder);
  return {
    certPath,
    certFolder,
    keyPath: join(certFolder, "key.pem"),
    caFolder,
    accountKeyPath: join(caFolder, "account-key.pem"),
  };
}

function permissions(path: string): string {
  return (statSync(path).mode & 0o777).toString(8);
}

/** Listens on 127.0.0.1:port so that ssl-proxy cannot bind it, and drops every connection. */
async function occupyPort(port: number): Promise<Server> {
  const server = createServer((socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: "127.0.0.1", port, exclusive: true }, resolve);
  });
  return server;
}

/** One HTTP response, parsed from the bytes on a connection. */
interface ParsedResponse {
  status: number;
  body: string;
  /** The number of bytes that the response took up on the connection. */
  size: number;
}

/**
 * Parses one HTTP/1.1 response from the start of `buffer`, framed by Content-Length or chunked
 * encoding. Returns undefined while the response is incomplete.
 */
function parseResponse(buffer: Buffer): ParsedResponse | undefined {
  const headEnd = buffer.indexOf("\r\n\r\n");
  if (headEnd === -1) return undefined;
  const head = buffer.subarray(0, headEnd).toString("latin1");
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1]);
  let offset = headEnd + 4;

  if (/^transfer-encoding:\s*chunked\s*$/im.test(head)) {
    const chunks: Buffer[] = [];
    for (;;) {
      const lineEnd = buffer.indexOf("\r\n", offset);
      if (lineEnd === -1) return undefined;
      const chunkSize = parseInt(buffer.subarray(offset, lineEnd).toString("latin1"), 16);
      if (buffer.length < lineEnd + 2 + chunkSize + 2) return undefined;
      offset = lineEnd + 2 + chunkSize + 2;
      if (chunkSize === 0) break;
      chunks.push(buffer.subarray(lineEnd + 2, lineEnd + 2 + chunkSize));
    }
    return { status, body: Buffer.concat(chunks).toString(), size: offset };
  }

  const contentLength = /^content-length:\s*(\d+)\s*$/im.exec(head)?.[1];
  if (contentLength === undefined) {
    throw new Error(`response without Content-Length or chunked encoding:\n${head}`);
  }
  const end = offset + Number(contentLength);
  if (buffer.length < end) return undefined;
  return { status, body: buffer.subarray(offset, end).toString(), size: end };
}

/** Reads HTTP responses from a socket, one per call of `next`. */
function readResponses(socket: TLSSocket) {
  let buffer = Buffer.alloc(0);
  let waiting: PromiseWithResolvers<ParsedResponse> | undefined;
  let closed: Error | undefined;

  const deliver = () => {
    const pending = waiting;
    if (!pending) return;
    let parsed: ParsedResponse | undefined;
    try {
      parsed = parseResponse(buffer);
    } catch (error) {
      waiting = undefined;
      pending.reject(error);
      return;
    }
    if (parsed) {
      buffer = buffer.subarray(parsed.size);
      waiting = undefined;
      pending.resolve(parsed);
    } else if (closed) {
      waiting = undefined;
      pending.reject(closed);
    }
  };
  socket.on("data", (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    deliver();
  });
  socket.on("error", (error) => {
    closed ??= error;
    deliver();
  });
  socket.on("close", () => {
    closed ??= new Error("the server closed the connection");
    deliver();
  });

  return {
    /** Returns the number of bytes received and not yet taken by `next`. */
    unread: () => buffer.length,
    next(timeoutMs = 5_000): Promise<ParsedResponse> {
      waiting = Promise.withResolvers<ParsedResponse>();
      const { promise } = waiting;
      deliver();
      const timer = setTimeout(() => {
        waiting?.reject(new Error(`no response within ${timeoutMs} ms`));
        waiting = undefined;
      }, timeoutMs);
      return promise.finally(() => clearTimeout(timer));
    },
  };
}

/** The outcome of one request in the renewal test. */
interface RequestOutcome {
  /** When the request was sent, in ms since the epoch. */
  sentAt: number;
  status?: number;
  body?: string;
  /** The serial of the certificate on a new connection that carried the request. */
  serial?: string;
  error?: string;
}

/**
 * Sends a request with `send` every REQUEST_INTERVAL_MS and records each outcome until `stop`
 * is called. `send` is called again only after the previous request has finished.
 */
function repeatRequests(send: () => Promise<Omit<RequestOutcome, "sentAt">>) {
  const outcomes: RequestOutcome[] = [];
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const sentAt = Date.now();
      try {
        outcomes.push({ sentAt, ...(await send()) });
      } catch (error) {
        const code = (error as { code?: string }).code;
        const message = error instanceof Error ? error.message : String(error);
        outcomes.push({ sentAt, error: code ? `${code}: ${message}` : message });
      }
      await Bun.sleep(REQUEST_INTERVAL_MS);
    }
  })();
  return {
    outcomes,
    async stop(): Promise<void> {
      stopped = true;
      await loop;
    },
  };
}

/**
 * Sends GET / to a.test over a kept-alive TLS connection, again and again. Like HTTP/1.1
 * clients (RFC 9112 section 9.3.1), it opens a new connection when the server has closed the
 * idle one, which Bun.serve does to idle connections when the certificate is swapped.
 */
async function startKeepAliveClient(port: number, ca: string) {
  const open = async () => {
    const socket = await connectVerified(port, "a.test", ca);
    const state = { socket, responses: readResponses(socket), closed: false };
    socket.once("close", () => (state.closed = true));
    return state;
  };
  let connection = await open();
  let reconnects = 0;
  const requests = repeatRequests(async () => {
    // The close of an idle connection can cross a request just sent. Like HTTP/1.1 clients
    // (RFC 9112 section 9.3.1), the GET is then sent once more, on a new connection.
    for (let attempt = 0; ; attempt++) {
      if (connection.closed) {
        connection = await open();
        reconnects++;
      }
      connection.socket.write("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
      try {
        const response = await connection.responses.next();
        return { status: response.status, body: response.body };
      } catch (error) {
        const unanswered = connection.closed && connection.responses.unread() === 0;
        if (attempt > 0 || !unanswered) throw error;
      }
    }
  });
  return {
    ...requests,
    reconnects: () => reconnects,
    async stop(): Promise<void> {
      await requests.stop();
      connection.socket.destroy();
    },
  };
}

/**
 * Opens one TLS connection and reads a response that the backend streams for `count` ticks,
 * so that the connection stays open, with a request in progress, through the swap.
 */
async function startStreamingClient(port: number, ca: string, count: number) {
  const socket = await connectVerified(port, "a.test", ca);
  let text = "";
  socket.on("data", (chunk: Buffer) => (text += chunk.toString("latin1")));
  const ended = new Promise<string>((resolve) => socket.once("close", () => resolve(text)));
  socket.write(`GET /stream?count=${count} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n`);
  return { ended };
}

/** Sends GET / to a.test over a new TLS connection each time, again and again. */
function startNewConnectionClient(port: number, ca: string) {
  return repeatRequests(async () => {
    const socket = await connectVerified(port, "a.test", ca);
    try {
      const serial = normalizeSerial(socket.getPeerCertificate().serialNumber);
      const responses = readResponses(socket);
      socket.write("GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
      const response = await responses.next();
      return { status: response.status, body: response.body, serial };
    } finally {
      socket.destroy();
    }
  });
}

/**
 * Tells whether Linux resets the connections waiting in a listener's accept queue when it
 * closes (net.ipv4.tcp_migrate_req is 0), instead of passing them to another listener on the
 * port. ssl-proxy closes its old listener when it swaps certificates.
 */
function swapResetsQueuedConnections(): boolean {
  try {
    return readFileSync("/proc/sys/net/ipv4/tcp_migrate_req", "utf8").trim() === "0";
  } catch {
    return false;
  }
}

function failedRequests(outcomes: RequestOutcome[]): RequestOutcome[] {
  return outcomes.filter(
    (outcome) =>
      outcome.error !== undefined || outcome.status !== 200 || outcome.body !== BACKEND_PAGE,
  );
}

/** Waits until the proxy prints that it renewed, and returns the new serial and when it saw it. */
async function waitForRenewal(proxy: ProxyProcess, deadline: number) {
  for (;;) {
    const serial = PRINTED_RENEWAL.exec(proxy.stdout())?.[1];
    if (serial !== undefined) return { serial: normalizeSerial(serial), seenAt: Date.now() };
    if (Date.now() > deadline) {
      throw new Error(
        `no renewal by ${new Date(deadline).toISOString()}\nstdout:\n${proxy.stdout()}\nstderr:\n${proxy.stderr()}`,
      );
    }
    await Bun.sleep(100);
  }
}

/**
 * Sends requests from two clients, one over a kept-open connection and one over a new connection
 * each time, until AFTER_RENEWAL_MS after the proxy prints its renewal. Returns their outcomes.
 */
async function sendRequestsThroughRenewal(proxy: ProxyProcess, ca: string) {
  const renewalTime = Date.parse(PRINTED_RENEWAL_TIME.exec(proxy.stdout())?.[1] ?? "");
  if (Number.isNaN(renewalTime)) throw new Error(`no renewal time in:\n${proxy.stdout()}`);
  const ticks = Math.ceil((renewalTime - Date.now() + RENEWAL_DEADLINE_MS) / REQUEST_INTERVAL_MS);
  const stream = await startStreamingClient(proxy.port, ca, ticks);
  const keptConnection = await startKeepAliveClient(proxy.port, ca);
  const newConnections = startNewConnectionClient(proxy.port, ca);
  try {
    const renewal = await waitForRenewal(proxy, renewalTime + RENEWAL_DEADLINE_MS);
    await Bun.sleep(AFTER_RENEWAL_MS);
    return { keptConnection, newConnections, renewal, stream, ticks };
  } finally {
    await Promise.all([keptConnection.stop(), newConnections.stop()]);
  }
}

describe.each(PROXY_COMMANDS)("ssl-proxy ACME ($name)", (command) => {
  describe("challenges", () => {
    const shared = new SharedPebble();

    test.concurrent("HTTP-01 certificate verifies", () =>
      shared.use(async (pebble) => {
        await withAcmeProxy(command, pebble, "a.test", makeTempDir("data"), async (proxy) => {
          const result = await curlWithRoot(pebble, "a.test", proxy.port);

          expect(result.stderr).toBe("");
          expect(result.exitCode).toBe(0);
          expect(result.stdout).toBe(BACKEND_PAGE);
          expect(proxy.stdout()).toContain("acme: a.test validated with http-01\n");
        });
      }),
    );

    test.concurrent("HTTP listener serves only challenges", () =>
      shared.use(async (pebble) => {
        await withAcmeProxy(command, pebble, "a.test", makeTempDir("data"), async (proxy) => {
          const url = `http://127.0.0.1:${pebble.httpPort}/other?x=1`;

          const result = await run(["curl", "-s", "-w", "\n%{http_code}", url]);

          expect(result.stdout).toBe(
            "Not Found: this port serves only ACME challenges; use https://\n\n404",
          );
          expect(proxy.stdout()).toContain(
            `http://127.0.0.1:${pebble.httpPort} -> ACME challenges only\n`,
          );
        });
      }),
    );

    test.concurrent("-redirectHTTP redirects beside challenges", () =>
      shared.use(async (pebble) => {
        const args = [...acmeArgs(pebble, "a.test", makeTempDir("data")), "-redirectHTTP"];
        const proxy = await startProxy(command, args);
        try {
          const url = `http://127.0.0.1:${pebble.httpPort}/login?next=/`;

          const result = await run(["curl", "-s", "-o", "/dev/null", "-D", "-", url]);

          expect(result.stdout).toStartWith("HTTP/1.1 301");
          expect(result.stdout).toContain(
            `Location: https://a.test:${proxy.port}/login?next=/\r\n`,
          );
        } finally {
          await proxy.stop();
        }
      }),
    );

    test.concurrent("TLS-ALPN-01 when HTTP port busy", () =>
      shared.use(async (pebble) => {
        const occupied = await occupyPort(pebble.httpPort);
        try {
          await withAcmeProxy(command, pebble, "a.test", makeTempDir("data"), async (proxy) => {
            const result = await curlWithRoot(pebble, "a.test", proxy.port);

            expect(result.stderr).toBe("");
            expect(result.exitCode).toBe(0);
            expect(result.stdout).toBe(BACKEND_PAGE);
            expect(proxy.stdout()).toContain("acme: a.test validated with tls-alpn-01\n");
          });
        } finally {
          occupied.close();
        }
      }),
    );

    test.concurrent(
      "unvalidated name exits with reason",
      () =>
        shared.use(async (pebble) => {
          // Pebble connects to 127.0.0.2 for bad.test, where nothing listens.
          await pebble.pointName("bad.test", "127.0.0.2");
          try {
            const startedAt = Date.now();

            const result = await runToExit(
              command,
              acmeArgs(pebble, "bad.test", makeTempDir("data")),
              { timeoutMs: VALIDATION_FAILURE_TIMEOUT_MS },
            );

            const elapsedMs = Date.now() - startedAt;
            const finalMessage = /^ssl-proxy: [\s\S]*/m.exec(result.stderr)?.[0] ?? "";
            const reasonLine = (type: string) =>
              finalMessage.split("\n").find((line) => line.includes(type)) ?? "";
            expect(result.exitCode).not.toBe(0);
            expect(elapsedMs).toBeLessThan(VALIDATION_FAILURE_TIMEOUT_MS);
            expect(finalMessage).toContain("bad.test");
            // Only the CA's reason contains the address that Pebble tried to reach.
            expect(reasonLine("http-01")).toContain(`127.0.0.2:${pebble.httpPort}`);
            expect(reasonLine("tls-alpn-01")).toContain(`127.0.0.2:${pebble.tlsPort}`);
          } finally {
            await pebble.resetName("bad.test");
          }
        }),
      VALIDATION_FAILURE_TIMEOUT_MS + 30_000,
    );
  });

  describe("stored certificate", () => {
    const shared = new SharedPebble();
    const other = new SharedPebble();

    test.concurrent("restart reuses the certificate", () =>
      shared.use(async (pebble) => {
        const dataDir = makeTempDir("data");
        const root = readFileSync(pebble.rootFile(), "utf8");
        const first = await withAcmeProxy(command, pebble, "a.test", dataDir, (proxy) =>
          readServedCertificate(proxy.port, "a.test", root),
        );
        const ordersBefore = pebble.orderCount();

        await withAcmeProxy(command, pebble, "a.test", dataDir, async (proxy) => {
          const second = await readServedCertificate(proxy.port, "a.test", root);

          expect(second.serialNumber).toBe(first.serialNumber);
          expect(pebble.orderCount()).toBe(ordersBefore);
          expect(PRINTED_CERTIFICATE.exec(proxy.stdout())?.[2]).toBe("stored");
        });
      }),
    );

    test.concurrent("two names share one certificate", () =>
      shared.use(async (pebble) => {
        const root = readFileSync(pebble.rootFile(), "utf8");
        const issuedBefore = pebble.issuedCount();

        await withAcmeProxy(
          command,
          pebble,
          "a.test,b.test",
          makeTempDir("data"),
          async (proxy) => {
            const forA = await readServedCertificate(proxy.port, "a.test", root);
            const forB = await readServedCertificate(proxy.port, "b.test", root);
            const curlB = await curlWithRoot(pebble, "b.test", proxy.port);

            expect(pebble.issuedCount()).toBe(issuedBefore + 1);
            expect(forB.serialNumber).toBe(forA.serialNumber);
            expect((forA.subjectaltname ?? "").split(", ").sort()).toEqual([
              "DNS:a.test",
              "DNS:b.test",
            ]);
            expect(curlB.exitCode).toBe(0);
            expect(curlB.stdout).toBe(BACKEND_PAGE);
          },
        );
      }),
    );

    const nameSets = [
      { label: "another name", first: "a.test", second: "b.test" },
      { label: "an added name", first: "a.test", second: "a.test,b.test" },
      { label: "a dropped name", first: "a.test,b.test", second: "a.test" },
    ];
    test.concurrent.each(nameSets)("$label orders again", ({ first, second }) =>
      shared.use(async (pebble) => {
        const dataDir = makeTempDir("data");
        const root = readFileSync(pebble.rootFile(), "utf8");
        const firstSerial = await withAcmeProxy(command, pebble, first, dataDir, async (proxy) => {
          const served = await readServedCertificate(proxy.port, first.split(",")[0]!, root);
          return served.serialNumber;
        });
        const ordersBefore = pebble.orderCount();

        await withAcmeProxy(command, pebble, second, dataDir, async (proxy) => {
          const served = await readServedCertificate(proxy.port, second.split(",")[0]!, root);

          expect(pebble.orderCount()).toBe(ordersBefore + 1);
          expect(PRINTED_CERTIFICATE.exec(proxy.stdout())?.[2]).toBe("new");
          expect(served.serialNumber).not.toBe(firstSerial);
          const names = (served.subjectaltname ?? "").split(", ").sort();
          expect(names).toEqual(second.split(",").map((name) => `DNS:${name}`));
        });
      }),
    );

    test.concurrent("another CA orders again", () =>
      shared.use((pebble) =>
        other.use(async (otherPebble) => {
          const dataDir = makeTempDir("data");
          await withAcmeProxy(command, pebble, "a.test", dataDir, async () => {});
          const ordersBefore = otherPebble.orderCount();
          const otherRoot = readFileSync(otherPebble.rootFile(), "utf8");

          await withAcmeProxy(command, otherPebble, "a.test", dataDir, async (proxy) => {
            // A certificate from the first Pebble would not verify against this root.
            const served = readServedCertificate(proxy.port, "a.test", otherRoot);

            expect(otherPebble.orderCount()).toBe(ordersBefore + 1);
            expect(PRINTED_CERTIFICATE.exec(proxy.stdout())?.[2]).toBe("new");
            await expect(served).resolves.toHaveProperty("serialNumber");
          });
        }),
      ),
    );

    test.concurrent("key files are private", () =>
      shared.use(async (pebble) => {
        // Under umask 000, a file or folder is private only if ssl-proxy sets its mode itself.
        const permissive = { argv: ["sh", "-c", 'umask 000 && exec "$@"', "sh", ...command.argv] };

        await withAcmeProxy(permissive, pebble, "a.test", makeTempDir("data"), async (proxy) => {
          const files = storedFiles(proxy);

          expect(permissions(files.accountKeyPath)).toBe("600");
          expect(permissions(files.keyPath)).toBe("600");
          expect(permissions(files.caFolder)).toBe("700");
          expect(permissions(files.certFolder)).toBe("700");
        });
      }),
    );
  });

  describe("renewal", () => {
    const shared = new SharedPebble({ validitySeconds: SHORT_VALIDITY_SECONDS });

    test.concurrent("swaps serial without failed requests", () =>
      shared.use(async (pebble) => {
        const root = readFileSync(pebble.rootFile(), "utf8");
        await withAcmeProxy(command, pebble, "a.test", makeTempDir("data"), async (proxy) => {
          const served = await readServedCertificate(proxy.port, "a.test", root);
          const firstSerial = normalizeSerial(served.serialNumber);

          const { keptConnection, newConnections, renewal, stream, ticks } =
            await sendRequestsThroughRenewal(proxy, root);
          const streamed = await stream.ended;

          const newAfterRenewal = newConnections.outcomes.filter(
            (outcome) => outcome.sentAt > renewal.seenAt,
          );
          const keptAfterRenewal = keptConnection.outcomes.filter(
            (outcome) => outcome.sentAt > renewal.seenAt,
          );
          // Where Linux resets the old listener's queued connections, a new connection may
          // fail at the swap, only with a reset, and the proxy logs how to prevent it.
          const resets = swapResetsQueuedConnections();
          const failedNew = failedRequests(newConnections.outcomes).filter(
            (outcome) => !resets || !outcome.error?.startsWith("ECONNRESET"),
          );
          expect(renewal.serial).not.toBe(firstSerial);
          expect(failedNew).toEqual([]);
          if (resets) expect(proxy.stderr()).toContain("sysctl -w net.ipv4.tcp_migrate_req=1");
          else expect(proxy.stderr()).not.toContain("tcp_migrate_req");
          expect(newAfterRenewal.length).toBeGreaterThanOrEqual(3);
          expect(newAfterRenewal.map((outcome) => outcome.serial)).toEqual(
            newAfterRenewal.map(() => renewal.serial),
          );
          expect(keptAfterRenewal.length).toBeGreaterThanOrEqual(3);
          expect(failedRequests(keptConnection.outcomes)).toEqual([]);
          expect(streamed).toContain("HTTP/1.1 200 ");
          expect(streamed).toContain(`tick ${ticks - 1}\n`);
        });
      }),
    );
  });
});
