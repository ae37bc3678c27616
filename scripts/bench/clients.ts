// Load generators other than wrk: a curl upload, idle TLS connections and WebSocket echo clients.
import { INSECURE_TLS } from "./processes.ts";
import { pinned, sleep } from "./system.ts";

/** Result of one upload. */
export interface UploadResult {
  bytesPerSecond: number;
}

/**
 * Uploads `file` (of `size` bytes) with curl as a PUT with Content-Length to `url`, and checks
 * that the backend reports the full size. The Expect header is left out, because a client that
 * waits for "100 Continue" would measure the proxy's handling of that instead of throughput.
 */
export async function uploadFile(
  url: string,
  file: string,
  size: number,
  cpus: string | undefined,
): Promise<UploadResult> {
  const argv = ["curl", "-sSk", "-T", file, "-H", "Expect:", "-w", "\n%{speed_upload}", url];
  const proc = Bun.spawn(pinned(cpus, argv), { stdout: "pipe", stderr: "pipe" });
  const [output, errorOutput, exitCode] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  const [received, speed] = output.trim().split("\n");
  if (exitCode !== 0 || Number(received) !== size) {
    throw new Error(
      `upload to ${url} failed: curl exit ${exitCode}, backend received ${received} of ${size} bytes ${errorOutput}`,
    );
  }
  return { bytesPerSecond: Number(speed) };
}

/** Open client connections, closed by close(). */
export interface IdleConnections {
  /** How many connections received a complete 200 response. */
  answered: number;
  close(): void;
}

/**
 * Opens `count` TLS connections to `origin`, sends one keep-alive GET of `path` on each, waits
 * for each 200 response and leaves the connections open. Connections open `batch` at a time.
 */
export async function openIdleConnections(
  origin: string,
  path: string,
  count: number,
  batch = 50,
): Promise<IdleConnections> {
  const { hostname, port } = new URL(origin);
  const sockets: { end(): void }[] = [];
  let answered = 0;
  for (let opened = 0; opened < count; opened += batch) {
    const size = Math.min(batch, count - opened);
    const results = await Promise.all(
      Array.from({ length: size }, () => openOne(hostname, Number(port), path)),
    );
    for (const result of results) {
      sockets.push(result.socket);
      if (result.ok) answered++;
    }
  }
  return { answered, close: () => sockets.forEach((socket) => socket.end()) };
}

async function openOne(hostname: string, port: number, path: string) {
  const done = Promise.withResolvers<boolean>();
  let head = "";
  const socket = await Bun.connect({
    hostname,
    port,
    tls: INSECURE_TLS,
    socket: {
      open(socket) {
        socket.write(`GET ${path} HTTP/1.1\r\nHost: ${hostname}:${port}\r\n\r\n`);
      },
      data(_socket, data) {
        head += data.toString("latin1");
        if (head.includes("\r\n\r\n")) done.resolve(head.startsWith("HTTP/1.1 200"));
      },
      close: () => done.resolve(false),
      error: () => done.resolve(false),
    },
  });
  const ok = await Promise.race([done.promise, sleep(10_000).then(() => false)]);
  return { socket, ok };
}

/**
 * Runs `connections` WebSocket clients against `url` for `seconds`. Each keeps one 64-byte text
 * message in flight and sends the next when the echo arrives. Returns echoes per second.
 */
export async function runWebSocketEcho(
  url: string,
  connections: number,
  seconds: number,
): Promise<number> {
  const message = "x".repeat(64);
  const sockets = await Promise.all(Array.from({ length: connections }, () => openSocket(url)));
  let echoes = 0;
  let running = true;
  for (const socket of sockets) {
    socket.onmessage = () => {
      echoes++;
      if (running) socket.send(message);
    };
  }
  const started = performance.now();
  for (const socket of sockets) socket.send(message);
  await sleep(seconds * 1000);
  running = false;
  const elapsed = (performance.now() - started) / 1000;
  const counted = echoes;
  for (const socket of sockets) socket.close();
  return counted / elapsed;
}

function openSocket(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { tls: INSECURE_TLS } as Bun.WebSocketOptions);
    socket.onopen = () => resolve(socket);
    socket.onerror = () => reject(new Error(`WebSocket to ${url} failed to open`));
  });
}
