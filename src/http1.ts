// The HTTP/1.1 client for http:// and unix: backends, on Bun.connect sockets.
//
// With Bun's fetch and the stream stage its bodies needed, a small request cost 55 us of proxy
// CPU time in `npm run bench` on a 2-core VM, and 31 us with this client. It keeps a pool of
// keep-alive connections and parses responses itself (RFC 9112): bodies of at most
// SMALL_BODY_BYTES with a Content-Length are read whole, and the others are streamed with
// backpressure through socket.pause() and resume().
import type { Socket, SocketHandler } from "bun";
import { Buffer } from "node:buffer";
import { formatHostPort } from "./address.ts";
import { slowRequests, type SlowRequestWatch } from "./slowrequests.ts";
import {
  hasListOption,
  HOP_BY_HOP_HEADERS,
  isHopByHopHeader,
  removeNamedHeaders,
} from "./headers.ts";
import {
  backendAddresses,
  connectToFirst,
  IncompleteBodyError,
  invalidStatusError,
  SMALL_BODY_BYTES,
  UpstreamTimeoutError,
  type UpstreamClient,
  type UpstreamRequestInit,
} from "./upstream.ts";

/** The backend's address: a TCP host and port, with TLS for https://, or a Unix socket. */
export type Http1Target = { host: string; port: number; tls?: Http1Tls } | { unix: string };

/** TLS settings for an https:// backend, as Bun.connect takes them. */
export interface Http1Tls {
  /** The name sent in SNI and checked in the certificate; left out for an IP address. */
  serverName?: string;
  /** The roots trusted, when not Bun's own. */
  ca?: string[];
  /** Whether a certificate that fails the check closes the connection. */
  rejectUnauthorized: boolean;
}

/** Largest response head accepted. A bigger one gets a 502. */
const MAX_HEAD_BYTES = 1024 * 1024;

/** Largest chunk-size or trailer line accepted in a chunked body. */
const MAX_CHUNK_LINE_BYTES = 8 * 1024;

/** Most idle keep-alive connections kept open to the backend. More are closed. */
const MAX_IDLE_CONNECTIONS = 512;

/**
 * Seconds an idle connection stays in the pool before it is closed. NOTE: a chosen value, not
 * tuned against backends; one that closes idle connections sooner only costs a reconnect.
 */
const IDLE_SECONDS = 30;

/** Bytes of a streamed body held for a slow client before reading from the backend pauses. */
const STREAM_BUFFER_BYTES = 512 * 1024;

const CRLF_CRLF = Buffer.from("\r\n\r\n");
const CRLF = Buffer.from("\r\n");
const EMPTY = Buffer.alloc(0);

/** An RFC 9110 token: the syntax of a header name. */
const TOKEN_PATTERN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** A field value with no control character other than tab (RFC 9110 section 5.5). */
const FIELD_VALUE_PATTERN = /^[\t\x20-\x7e\x80-\xff]*$/;
const STATUS_LINE_PATTERN = /^HTTP\/1\.([01]) (\d{3})(?: [^\r\n]*)?$/;
/**
 * A Connection value that names no header to remove: "keep-alive" alone, which is hop-by-hop
 * itself. "close" is not here, because it would also name a header called Close.
 */
const KEEP_ALIVE_ONLY_PATTERN = /^[ \t]*keep-alive[ \t]*$/i;

/**
 * The lengths of the header names that parseHead looks at in lower case: the hop-by-hop ones
 * and Content-Length. Other names are passed on as the backend wrote them.
 */
const LENGTHS_TO_LOWER_CASE: boolean[] = [];
for (const name of [...HOP_BY_HOP_HEADERS, "content-length"])
  LENGTHS_TO_LOWER_CASE[name.length] = true;

/** Returns the field value of a header line from `start`, without the whitespace around it. */
function fieldValue(line: string, start: number): string {
  let from = start;
  let to = line.length;
  while (from < to && isOptionalWhitespace(line.charCodeAt(from))) from++;
  while (to > from && isOptionalWhitespace(line.charCodeAt(to - 1))) to--;
  return line.slice(from, to);
}

/** Tells whether a character code is a space or a tab, the OWS of RFC 9110 section 5.6.3. */
function isOptionalWhitespace(code: number): boolean {
  return code === 0x20 || code === 0x09;
}

/** Creates an upstream client that speaks HTTP/1.1 to `target` over pooled connections. */
export function createHttp1Client(target: Http1Target): UpstreamClient {
  const pool = new Pool(target);
  return async (url, init) => {
    const { head, chunked } = requestHead(url, init, target);
    const deadline = init.timeoutMs > 0 ? performance.now() + init.timeoutMs : Infinity;
    // A pooled connection may have been closed by the backend just as the request went out.
    // A request without a body is then sent once more on a new connection.
    for (let attempt = 0; ; attempt++) {
      const connection = pool.idleConnection() ?? (await pool.open(init, deadline));
      try {
        return await connection.send(head, chunked, init, deadline);
      } catch (error) {
        if (!(error instanceof StaleConnectionError) || attempt > 0 || init.signal.aborted) {
          throw error instanceof StaleConnectionError ? error.cause : error;
        }
      }
    }
  };
}

/** Raised when a reused connection closed before any byte of the response arrived. */
class StaleConnectionError extends Error {}

/**
 * Builds the request head. `chunked` is true when the body has no Content-Length and is then
 * sent with chunked framing.
 */
function requestHead(
  url: string,
  init: UpstreamRequestInit,
  target: Http1Target,
): { head: Buffer; chunked: boolean } {
  const pathStart = url.indexOf("/", url.indexOf("//") + 2);
  const path = pathStart === -1 ? "/" : url.slice(pathStart);
  let host: string | undefined;
  let fields = "";
  let length = false;
  init.forEachHeader((name, value) => {
    if (name === "host") {
      host = value;
      return;
    }
    if (name === "content-length") length = true;
    fields += `${name}: ${value}\r\n`;
  });
  host ??= "unix" in target ? "localhost" : formatHostPort(target.host, target.port);
  const chunked = init.body !== null && !length;
  if (chunked) fields += "transfer-encoding: chunked\r\n";
  // RFC 9110 section 7.2: Host comes first after the request line. Header values hold one
  // byte per character, as Bun.serve read them.
  const head = `${init.method} ${path} HTTP/1.1\r\nHost: ${host}\r\n${fields}\r\n`;
  return { head: Buffer.from(head, "latin1"), chunked };
}

const SOCKET_HANDLERS: SocketHandler<Connection> = {
  data: (socket, bytes) => socket.data.receive(bytes),
  handshake: (socket, success, error) => socket.data.handshake(success, error),
  drain: (socket) => socket.data.drain(),
  end: (socket) => socket.data.closed(undefined),
  close: (socket, error) => socket.data.closed(error),
  error: (socket, error) => socket.data.closed(error),
  timeout: (socket) => socket.data.idleTimeout(),
};

/** The idle connections to one backend, and the way to open new ones. */
class Pool {
  private readonly idle: Connection[] = [];
  /** Whether a certificate that fails the check is accepted, with -upstreamInsecure. */
  readonly acceptsAnyCertificate: boolean;

  constructor(private readonly target: Http1Target) {
    this.acceptsAnyCertificate = "tls" in target && target.tls?.rejectUnauthorized === false;
  }

  /** Returns an idle connection, or undefined when there is none. */
  idleConnection(): Connection | undefined {
    return this.idle.pop();
  }

  /** Puts a connection whose exchange ended cleanly back for the next request. */
  release(connection: Connection): void {
    if (this.idle.length >= MAX_IDLE_CONNECTIONS) {
      connection.destroy();
      return;
    }
    this.idle.push(connection);
  }

  forget(connection: Connection): void {
    const index = this.idle.lastIndexOf(connection);
    if (index !== -1) this.idle.splice(index, 1);
  }

  /**
   * Opens a connection; rejects with UpstreamTimeoutError when `deadline` (a performance.now()
   * time) passes first, and with the abort reason when the client goes away meanwhile.
   */
  async open(init: UpstreamRequestInit, deadline: number): Promise<Connection> {
    const connection = new Connection(this);
    const options = { socket: SOCKET_HANDLERS, data: connection };
    const { target } = this;
    const connecting =
      "unix" in target
        ? Bun.connect({ unix: target.unix, ...options })
        : connectToAny(target.host, target.port, target.tls, options).then(async (socket) => {
            if (target.tls) await connection.handshakeDone();
            return socket;
          });
    let timer: Timer | undefined;
    const expired = new Promise<never>((_, reject) => {
      if (deadline === Infinity) return;
      const fire = () => reject(new UpstreamTimeoutError(init.timeoutMs));
      timer = setTimeout(fire, deadline - performance.now());
    });
    try {
      connection.socket = await Promise.race([connecting, expired]);
    } catch (error) {
      // A connection that is made after all is closed at once.
      void connecting.then(
        (socket) => socket.terminate(),
        () => {},
      );
      throw error;
    } finally {
      clearTimeout(timer);
    }
    connection.socket.timeout(IDLE_SECONDS);
    if (init.signal.aborted) {
      connection.destroy();
      throw init.signal.reason;
    }
    return connection;
  }
}

/**
 * Connects to the first address of `host` that accepts, as Bun's fetch does. With `tls`, the
 * TLS handshake follows, which the Connection's handshakeDone() waits for.
 */
async function connectToAny(
  host: string,
  port: number,
  tls: Http1Tls | undefined,
  options: { socket: SocketHandler<Connection>; data: Connection },
): Promise<Socket<Connection>> {
  return connectToFirst(await backendAddresses(host), (address) =>
    Bun.connect({ hostname: address, port, ...(tls ? { tls } : {}), ...options }),
  );
}

/** The parser's position in a response. */
const enum Stage {
  Head,
  FixedBody,
  ChunkSize,
  ChunkData,
  ChunkDataEnd,
  Trailers,
  BodyUntilClose,
  Done,
}

/** One connection to the backend, carrying one exchange at a time. */
class Connection {
  socket!: Socket<Connection>;
  /** Whether a response has been read off this connection before. */
  private reused = false;
  private isClosed = false;
  private exchange: Exchange | undefined;
  private unsent: Uint8Array | undefined;
  private onDrained: (() => void) | undefined;
  private paused = false;
  /** Settles when the TLS handshake of an https:// connection is done: rejected when it failed. */
  private handshaken: PromiseWithResolvers<void> | undefined;

  constructor(private readonly pool: Pool) {}

  /**
   * Sends a request and resolves with the response once its head (or whole small body) has
   * arrived, or rejects with UpstreamTimeoutError after `deadline`.
   */
  send(
    head: Buffer,
    chunked: boolean,
    init: UpstreamRequestInit,
    deadline: number,
  ): Promise<Response> {
    return new Promise<Response>((resolve, reject) => {
      const exchange = new Exchange(this, init, this.reused, resolve, reject);
      this.exchange = exchange;
      if (deadline - performance.now() < 2 * slowRequests.periodMs) {
        exchange.watchClient(deadline);
      } else {
        exchange.slowWatch = slowRequests.watch(() => exchange.watchClient(deadline));
      }
      if (init.body) {
        void exchange.sendBody(head, init.body, chunked);
      } else if (!this.write(head) && this.isClosed) {
        exchange.fail(new Error("the connection to the app closed"));
      }
    });
  }

  /**
   * Writes `bytes`, keeping what the socket did not take for the next drain. Returns whether
   * all of it was written.
   */
  write(bytes: Uint8Array): boolean {
    if (this.isClosed) return false;
    if (this.unsent !== undefined) {
      this.unsent = Buffer.concat([this.unsent, bytes]);
      return false;
    }
    const written = this.socket.write(bytes);
    if (written === bytes.byteLength) return true;
    this.unsent = bytes.subarray(Math.max(written, 0));
    return false;
  }

  /** Resolves once the bytes of the last write have all gone out, or the connection closed. */
  drained(): Promise<void> {
    if (this.unsent === undefined || this.isClosed) return Promise.resolve();
    return new Promise((resolve) => (this.onDrained = resolve));
  }

  /**
   * Settles handshakeDone(). `success` is false when the certificate failed the check, even
   * where it is accepted anyway, and `error` then gives the reason, such as
   * DEPTH_ZERO_SELF_SIGNED_CERT.
   */
  handshake(success: boolean, error: Error | null): void {
    const handshaken = this.expectHandshake();
    if (success || this.pool.acceptsAnyCertificate) {
      handshaken.resolve();
      return;
    }
    handshaken.reject(error ?? new Error("the TLS handshake with the app failed"));
    this.destroy();
  }

  /** Resolves once the TLS handshake succeeded, and rejects with the reason when it failed. */
  handshakeDone(): Promise<void> {
    return this.expectHandshake().promise;
  }

  private expectHandshake(): PromiseWithResolvers<void> {
    if (!this.handshaken) {
      this.handshaken = Promise.withResolvers<void>();
      // After a connect timeout no caller waits for the handshake, and its failure is ignored.
      this.handshaken.promise.catch(() => {});
    }
    return this.handshaken;
  }

  receive(bytes: Buffer): void {
    if (this.exchange) this.exchange.receive(bytes);
    else this.destroy(); // bytes that no request is waiting for
  }

  drain(): void {
    const unsent = this.unsent;
    if (unsent === undefined) return;
    this.unsent = undefined;
    if (!this.write(unsent)) return;
    const resolve = this.onDrained;
    this.onDrained = undefined;
    resolve?.();
  }

  closed(error: Error | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.handshaken?.reject(error ?? endOfStream());
    this.pool.forget(this);
    this.exchange?.fail(error ?? endOfStream());
    this.onDrained?.();
  }

  /**
   * Closes the connection after IDLE_SECONDS without traffic when no exchange uses it. A
   * connection in use is left to -upstreamTimeout and the client.
   */
  idleTimeout(): void {
    if (this.exchange) this.socket.timeout(IDLE_SECONDS);
    else this.destroy(true);
  }

  /**
   * Ends the exchange: the connection goes back to the pool when `reusable`, else it closes,
   * with a FIN when `graceful`.
   */
  finish(reusable: boolean, graceful: boolean): void {
    this.exchange = undefined;
    if (reusable && !this.isClosed && this.unsent === undefined) {
      this.reused = true;
      this.resume();
      this.pool.release(this);
    } else {
      this.destroy(graceful);
    }
  }

  /**
   * Closes the connection: with a FIN when `graceful`, else with a reset, which also drops
   * what the backend may still send.
   */
  destroy(graceful = false): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.pool.forget(this);
    if (graceful) this.socket.end();
    else this.socket.terminate();
    this.onDrained?.();
  }

  pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.socket.pause();
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.socket.resume();
  }
}

/** Creates the error for a backend that closed its side of the connection (a FIN, not a reset). */
function endOfStream(): Error {
  return Object.assign(new Error("the app closed the connection"), {
    code: "ECONNRESET",
    endOfStream: true,
  });
}

/** Creates the error for a response that breaks HTTP/1.1's rules, described by `description`. */
function malformed(description: string): Error {
  return Object.assign(new Error(`the app sent ${description}`), { code: "ERR_INVALID_RESPONSE" });
}

/** One request and its response on a connection: the response parser and the body it feeds. */
class Exchange {
  /** Fires when -upstreamTimeout passes before the response head arrived. */
  private timer: Timer | undefined;
  /** The watch that starts the timer and the abort listener once the exchange is slow. */
  slowWatch: SlowRequestWatch | undefined;
  /** Whether the exchange listens for the client's abort signal. */
  private listening = false;
  private stage = Stage.Head;
  /** Bytes of an unfinished head, chunk-size line or trailer line. */
  private partial: Buffer = EMPTY;
  private anyBytes = false;
  /** Bytes still to come in the fixed-length body or the current chunk. */
  private remaining = 0;
  private reusable = true;
  private requestSent = false;
  /** The whole body of a small fixed-length response, as it fills. */
  private buffered: Buffer | undefined;
  private filled = 0;
  private status = 0;
  private headers!: Headers;
  private stream: BodyStream | undefined;
  private settled = false;

  constructor(
    private readonly connection: Connection,
    private readonly init: UpstreamRequestInit,
    private readonly reused: boolean,
    private readonly resolve: (res: Response) => void,
    private readonly reject: (error: unknown) => void,
  ) {}

  /** Writes the head, then the request body, framed as chunked when it has no Content-Length. */
  async sendBody(head: Buffer, body: ReadableStream<Uint8Array>, chunked: boolean): Promise<void> {
    const reader = body.getReader();
    const { connection } = this;
    try {
      connection.write(head);
      for (;;) {
        await connection.drained();
        if (this.stage === Stage.Done) break;
        const { done, value } = await reader.read();
        if (done) {
          if (chunked) connection.write(Buffer.from("0\r\n\r\n"));
          this.requestSent = true;
          break;
        }
        if (value.byteLength === 0) continue;
        if (chunked) {
          connection.write(Buffer.from(`${value.byteLength.toString(16)}\r\n`));
          connection.write(value);
          connection.write(CRLF);
        } else {
          connection.write(value);
        }
      }
    } catch (error) {
      // The client's upload broke off: fail() closes the connection, so that the backend
      // cannot take the partial body for a whole one.
      this.fail(error);
    } finally {
      if (!this.requestSent) void reader.cancel().catch(() => {});
    }
  }

  receive(bytes: Buffer): void {
    this.anyBytes = true;
    try {
      this.parse(bytes);
    } catch (error) {
      this.reusable = false;
      this.fail(error);
    }
  }

  private parse(input: Buffer): void {
    let bytes = input;
    while (bytes.byteLength > 0) {
      switch (this.stage) {
        case Stage.Head:
          bytes = this.parseHead(bytes);
          break;
        case Stage.FixedBody:
          bytes = this.takeBody(bytes);
          if (this.remaining === 0) this.complete();
          break;
        case Stage.ChunkSize: {
          const line = this.takeLine(bytes);
          if (line === undefined) return;
          bytes = line.rest;
          const size = line.text.split(";", 1)[0]!.trim();
          if (!/^[0-9a-fA-F]{1,15}$/.test(size)) throw malformed("a malformed chunk size");
          this.remaining = parseInt(size, 16);
          this.stage = this.remaining === 0 ? Stage.Trailers : Stage.ChunkData;
          break;
        }
        case Stage.ChunkData:
          bytes = this.takeBody(bytes);
          if (this.remaining === 0) this.stage = Stage.ChunkDataEnd;
          break;
        case Stage.ChunkDataEnd: {
          const line = this.takeLine(bytes);
          if (line === undefined) return;
          if (line.text !== "") throw malformed("chunk data longer than its size");
          bytes = line.rest;
          this.stage = Stage.ChunkSize;
          break;
        }
        case Stage.Trailers: {
          const line = this.takeLine(bytes);
          if (line === undefined) return;
          bytes = line.rest;
          if (line.text === "") this.complete();
          break;
        }
        case Stage.BodyUntilClose:
          this.deliver(bytes);
          return;
        case Stage.Done:
          // More bytes than the response framed: the connection is not safe to reuse.
          this.reusable = false;
          this.connection.destroy();
          return;
      }
    }
  }

  /** Delivers the bytes that belong to the fixed-length body or the current chunk, and returns the rest. */
  private takeBody(bytes: Buffer): Buffer {
    const take = Math.min(this.remaining, bytes.byteLength);
    this.remaining -= take;
    if (take === bytes.byteLength) {
      this.deliver(bytes);
      return EMPTY;
    }
    this.deliver(bytes.subarray(0, take));
    return bytes.subarray(take);
  }

  /** Splits off one CRLF-ended line, keeping a partial line for the next read. */
  private takeLine(bytes: Buffer): { text: string; rest: Buffer } | undefined {
    const joined = this.partial.byteLength > 0 ? Buffer.concat([this.partial, bytes]) : bytes;
    const end = joined.indexOf(CRLF);
    if (end === -1) {
      if (joined.byteLength > MAX_CHUNK_LINE_BYTES)
        throw malformed("a chunk line that is too long");
      this.partial = joined;
      return undefined;
    }
    this.partial = EMPTY;
    return { text: joined.toString("latin1", 0, end), rest: joined.subarray(end + 2) };
  }

  /** Reads the response head off `bytes` and returns the bytes after it. */
  private parseHead(bytes: Buffer): Buffer {
    const joined = this.partial.byteLength > 0 ? Buffer.concat([this.partial, bytes]) : bytes;
    const end = joined.indexOf(CRLF_CRLF);
    if (end === -1) {
      if (joined.byteLength > MAX_HEAD_BYTES) throw malformed("a response head over 1 MiB");
      this.partial = joined;
      return EMPTY;
    }
    this.partial = EMPTY;
    const lines = joined.toString("latin1", 0, end).split("\r\n");
    // Buffer.subarray showed in profiles, and most heads end where the packet ends.
    const rest = end + 4 === joined.byteLength ? EMPTY : joined.subarray(end + 4);

    const statusLine = STATUS_LINE_PATTERN.exec(lines[0]!);
    if (!statusLine) throw malformed("a malformed status line");
    const status = Number(statusLine[2]);
    if (status >= 100 && status < 200 && status !== 101) return rest; // 100 Continue, 103 Early Hints
    if (status < 200 || status > 599) throw invalidStatusError(status);

    const headers = new Headers();
    let length: string | undefined;
    let transferEncoding: string | undefined;
    let connectionOptions = "";
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!;
      const colon = line.indexOf(":");
      const name = colon > 0 ? line.slice(0, colon) : "";
      if (!TOKEN_PATTERN.test(name)) throw malformed("a malformed header line");
      const value = fieldValue(line, colon + 1);
      if (!FIELD_VALUE_PATTERN.test(value)) throw malformed(`a control character in ${name}`);
      // Lower-casing every name cost about as much as the rest of this loop, and only these need it.
      const lower = LENGTHS_TO_LOWER_CASE[name.length] === true ? name.toLowerCase() : "";
      if (lower === "content-length") {
        if (!/^\d{1,15}$/.test(value) || (length !== undefined && length !== value)) {
          throw malformed("a malformed or doubled Content-Length");
        }
        if (length !== undefined) continue;
        length = value;
      } else if (lower === "transfer-encoding") {
        transferEncoding = transferEncoding === undefined ? value : `${transferEncoding}, ${value}`;
      } else if (lower === "connection") {
        connectionOptions = connectionOptions === "" ? value : `${connectionOptions},${value}`;
      }
      if (lower === "" || !isHopByHopHeader(lower)) headers.append(name, value);
    }
    // Connection may come after the headers it names, which are hop-by-hop too.
    if (connectionOptions !== "" && !KEEP_ALIVE_ONLY_PATTERN.test(connectionOptions)) {
      removeNamedHeaders(headers, connectionOptions);
    }

    const http10 = statusLine[1] === "0";
    if (hasListOption(connectionOptions, "close")) this.reusable = false;
    else if (http10 && !hasListOption(connectionOptions, "keep-alive")) this.reusable = false;
    this.status = status;
    this.headers = headers;

    // RFC 9112 section 6.3: the order in which a response's body length is decided.
    if (this.init.method === "HEAD" || status === 204 || status === 304) {
      this.complete();
    } else if (transferEncoding !== undefined) {
      // Transfer-Encoding overrides Content-Length, and such a response may be an attempt at
      // request smuggling, so its connection is not reused.
      if (length !== undefined) {
        headers.delete("content-length");
        this.reusable = false;
      }
      const codings = transferEncoding.toLowerCase().split(",");
      if (codings[codings.length - 1]!.trim() === "chunked") {
        this.stage = Stage.ChunkSize;
      } else {
        this.reusable = false;
        this.stage = Stage.BodyUntilClose;
      }
      this.startStream();
    } else if (length !== undefined) {
      this.remaining = Number(length);
      if (this.remaining === 0) {
        this.complete();
      } else {
        this.stage = Stage.FixedBody;
        if (this.remaining <= SMALL_BODY_BYTES) this.buffered = Buffer.allocUnsafe(this.remaining);
        else this.startStream();
      }
    } else {
      this.reusable = false;
      this.stage = Stage.BodyUntilClose;
      this.startStream();
    }
    return rest;
  }

  /** Resolves with a response whose body streams from the connection. */
  private startStream(): void {
    this.settle();
    const owns = () => this.stage !== Stage.Done;
    this.stream = new BodyStream({
      pause: () => owns() && this.connection.pause(),
      resume: () => owns() && this.connection.resume(),
      // The client went away: the rest of the body would go nowhere.
      cancel: () => this.end(false),
    });
    this.resolve(
      new Response(this.stream.readable, { status: this.status, headers: this.headers }),
    );
  }

  private deliver(chunk: Buffer): void {
    if (this.buffered) {
      this.buffered.set(chunk, this.filled);
      this.filled += chunk.byteLength;
    } else {
      this.stream?.push(chunk);
    }
  }

  /** Finishes a response that has reached the end its framing gave. */
  private complete(): void {
    const { buffered } = this;
    if (this.stream) {
      this.stream.end();
      this.stream = undefined;
    } else if (!this.settled) {
      this.settle();
      this.resolve(new Response(buffered ?? null, { status: this.status, headers: this.headers }));
    }
    this.end(this.reusable, true);
  }

  /**
   * Starts the -upstreamTimeout timer for `deadline` (a performance.now() time, or Infinity)
   * and listens for the client going away. Reading the request's signal creates it, so send()
   * calls this through slowRequests unless the deadline is less than two ticks away.
   */
  watchClient(deadline: number): void {
    if (this.settled) return;
    const { signal } = this.init;
    if (signal.aborted) {
      this.abort(signal.reason);
      return;
    }
    signal.onabort = () => this.abort(signal.reason);
    this.listening = true;
    if (deadline !== Infinity) {
      this.timer = setTimeout(() => this.timeOut(), deadline - performance.now());
    }
  }

  private settle(): void {
    this.settled = true;
    if (this.slowWatch) this.slowWatch.onSlow = undefined;
    if (this.listening) this.init.signal.onabort = null;
    clearTimeout(this.timer);
  }

  /** Ends the exchange. `whole` is true when the response reached the end its framing gave. */
  private end(reusable: boolean, whole = false): void {
    if (this.stage === Stage.Done) return;
    this.stage = Stage.Done;
    // A backend may respond before it has read the whole request body (with a 413, say), and
    // the connection then still carries the rest of the upload.
    const uploaded = this.requestSent || this.init.body === null;
    this.connection.finish(reusable && uploaded, whole && uploaded);
  }

  /** Fails the exchange because the connection closed or the response was malformed. */
  fail(error: unknown): void {
    if (this.stage === Stage.Done) return;
    if (this.stage === Stage.BodyUntilClose && isCleanEnd(error)) {
      this.stream?.end();
      this.stream = undefined;
      this.end(false);
      return;
    }
    const stream = this.stream;
    this.stream = undefined;
    this.end(false);
    if (!this.settled) {
      this.settle();
      if (this.buffered) {
        this.reject(new IncompleteBodyError(error));
      } else if (this.reused && !this.anyBytes && this.init.body === null) {
        this.reject(new StaleConnectionError("stale connection", { cause: error }));
      } else {
        this.reject(error);
      }
      return;
    }
    if (stream) {
      this.init.onBrokenBody(error);
      stream.end({ error });
    }
  }

  /** Aborts the exchange because -upstreamTimeout passed before the response head arrived. */
  timeOut(): void {
    this.abort(new UpstreamTimeoutError(this.init.timeoutMs));
  }

  /** Aborts the exchange because the client went away or -upstreamTimeout passed. */
  abort(reason: unknown): void {
    const stream = this.stream;
    this.stream = undefined;
    this.end(false);
    if (!this.settled) {
      this.settle();
      this.reject(reason);
    } else {
      stream?.end({ error: reason });
    }
  }
}

/** The hooks by which a BodyStream controls the connection it reads from. */
interface BodySource {
  pause(): void;
  resume(): void;
  /** The reader cancelled the stream. */
  cancel(): void;
}

/**
 * The body of a streamed response. A chunk goes to the reader at once while it waits, and is
 * queued otherwise; reading from the backend pauses while STREAM_BUFFER_BYTES are queued.
 * NOTE: Bun 1.4.5's HTTP/2 responses stall when pull() enqueues synchronously or in a
 * microtask (a 1 MiB download stopped after 768 KiB), so queued chunks are handed over in a
 * setImmediate callback, and new ones in the socket's data callback.
 */
class BodyStream {
  readonly readable: ReadableStream<Uint8Array>;
  private controller!: ReadableStreamDefaultController<Uint8Array>;
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  private waiting: (() => void) | undefined;
  /** The outcome of a body that ended while chunks were still queued: whole, or with `error`. */
  private ending: { error?: unknown } | undefined;
  private closed = false;

  constructor(private readonly source: BodySource) {
    this.readable = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.controller = controller;
      },
      pull: () => this.pull(),
      cancel: () => {
        this.closed = true;
        this.queue = [];
        this.wake();
        this.source.cancel();
      },
    });
  }

  push(chunk: Buffer): void {
    if (this.closed) return;
    if (this.waiting) {
      this.controller.enqueue(chunk);
      this.wake();
      return;
    }
    this.queue.push(chunk);
    this.queuedBytes += chunk.byteLength;
    if (this.queuedBytes >= STREAM_BUFFER_BYTES) this.source.pause();
  }

  /** Ends the body, whole or with `ending.error`, after the chunks still queued. */
  end(ending: { error?: unknown } = {}): void {
    if (this.closed || this.ending) return;
    if (this.queue.length > 0) this.ending = ending;
    else this.finish(ending);
  }

  private finish(ending: { error?: unknown }): void {
    this.closed = true;
    // Erroring with undefined keeps Bun from printing the error with a source excerpt.
    if ("error" in ending) this.controller.error(undefined);
    else this.controller.close();
    this.wake();
  }

  private pull(): Promise<void> {
    if (this.queue.length === 0) {
      this.source.resume();
      return new Promise((resolve) => (this.waiting = resolve));
    }
    return new Promise((resolve) =>
      setImmediate(() => {
        if (!this.closed) {
          for (const chunk of this.queue) this.controller.enqueue(chunk);
          this.queue = [];
          this.queuedBytes = 0;
          if (this.ending) this.finish(this.ending);
          else this.source.resume();
        }
        resolve();
      }),
    );
  }

  private wake(): void {
    const resolve = this.waiting;
    this.waiting = undefined;
    resolve?.();
  }
}

/** Tells whether `error` is the backend closing its side, which ends a body read until close. */
function isCleanEnd(error: unknown): boolean {
  return (error as { endOfStream?: boolean }).endOfStream === true;
}
