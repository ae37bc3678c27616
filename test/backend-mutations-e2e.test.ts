import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { PROXY_COMMANDS, startProxy, startRawBackend, type ProxyProcess } from "./helpers.ts";

// A backend that sends damaged copies of valid responses on keep-alive connections. After each
// one, a normal request must still get its own response from a proxy that is still running.

/** Valid responses that the damaged ones are made from. */
const ORIGINALS = [
  "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
  "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
  "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
  'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 10\r\n\r\n',
];

/** How many damaged responses are tried. */
const MUTATIONS = 120;

/** A seeded xorshift generator, so that every run tries the same damage. */
function randomSource(seed: number): (below: number) => number {
  let state = seed * 2654435761 || 1;
  return (below) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % below;
  };
}

/** Returns damaged response number `index`: one to three edits of an original. */
function damagedResponse(index: number): Buffer {
  const random = randomSource(index + 1);
  let bytes = Buffer.from(ORIGINALS[index % ORIGINALS.length]!, "latin1");
  const edits = 1 + random(3);
  for (let edit = 0; edit < edits; edit++) {
    const at = random(bytes.length);
    switch (random(5)) {
      case 0: // flip one byte
        bytes[at] = random(256);
        break;
      case 1: // insert a few bytes, often line breaks or digits
        bytes = Buffer.concat([
          bytes.subarray(0, at),
          Buffer.from(["\r\n", "\n", "0", ":", " ", "\x00"][random(6)]!, "latin1"),
          bytes.subarray(at),
        ]);
        break;
      case 2: // cut a range out
        bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + 1 + random(8))]);
        break;
      case 3: // repeat a range
        bytes = Buffer.concat([bytes.subarray(0, at + 4), bytes.subarray(at)]);
        break;
      default: // end early
        bytes = bytes.subarray(0, at);
    }
  }
  return bytes;
}

let backend: Awaited<ReturnType<typeof startRawBackend>>;

beforeAll(async () => {
  backend = await startRawBackend((request, { socket }) => {
    const path = request.requestLine.split(" ")[1] ?? "/";
    const damaged = /^\/damaged\/(\d+)$/.exec(path);
    if (!damaged) {
      const body = `fine ${path}`;
      return `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    }
    // A response left unfinished would otherwise hold its connection open.
    setTimeout(() => socket.destroy(), 300);
    return damagedResponse(Number(damaged[1]));
  });
});

afterAll(() => backend.close());

// The response parser is the same code in the source and the binary, so the source suffices.
describe.each(PROXY_COMMANDS.slice(0, 1))("damaged backend responses ($name)", (command) => {
  let proxy: ProxyProcess;

  beforeAll(async () => {
    const to = `http://127.0.0.1:${backend.port}`;
    proxy = await startProxy(command, ["-to", to, "-upstreamTimeout", "1s"]);
  });

  afterAll(() => proxy.stop());

  test(`serves a normal request after each of ${MUTATIONS} damaged responses`, async () => {
    const tls = { rejectUnauthorized: false };
    const wrongAnswers: string[] = [];
    for (let index = 0; index < MUTATIONS; index++) {
      const damaged = `https://127.0.0.1:${proxy.port}/damaged/${index}`;
      // Any status, a reset or a cut body is fine here; the request must only end.
      await fetch(damaged, { tls, signal: AbortSignal.timeout(3_000) })
        .then((res) => res.arrayBuffer())
        .catch(() => {});

      const res = await fetch(`https://127.0.0.1:${proxy.port}/after/${index}`, { tls });
      const body = await res.text();
      if (res.status !== 200 || body !== `fine /after/${index}`) {
        wrongAnswers.push(`after ${index}: ${res.status} ${JSON.stringify(body)}`);
      }
    }

    expect(wrongAnswers).toEqual([]);
    expect(proxy.proc.exitCode).toBeNull();
  }, 240_000);
});
