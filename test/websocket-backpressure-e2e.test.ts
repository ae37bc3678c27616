import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { once } from "node:events";
import type { TLSSocket } from "node:tls";
import { PROXY_COMMANDS, openTls, startProxy, type ProxyProcess } from "./helpers.ts";

const MESSAGES = 60;
const MESSAGE_BYTES = 1024 * 1024;

let backend: ReturnType<typeof Bun.serve>;

beforeAll(() => {
  // On "flood", sends MESSAGES messages of 1 MiB at once, each starting with its number.
  backend = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req, server) {
      if (server.upgrade(req, { data: undefined })) return;
      return new Response("WebSockets only", { status: 400 });
    },
    websocket: {
      backpressureLimit: 1024 * MESSAGE_BYTES,
      message(ws) {
        for (let i = 0; i < MESSAGES; i++) {
          const message = new Uint8Array(MESSAGE_BYTES).fill(97);
          message.set(new TextEncoder().encode(String(i).padStart(8, "0")));
          ws.send(message);
        }
      },
    },
  });
});

afterAll(() => backend.stop(true));

/** A frame from the server: its opcode and payload (server frames are not masked). */
interface Frame {
  opcode: number;
  payload: Buffer;
}

/** Splits the bytes after the handshake into WebSocket frames (RFC 6455 section 5.2). */
function parseFrames(bytes: Buffer): Frame[] {
  const frames: Frame[] = [];
  let offset = 0;
  while (offset + 2 <= bytes.length) {
    let length = bytes[offset + 1]! & 0x7f;
    let start = offset + 2;
    if (length === 126) {
      length = bytes.readUInt16BE(offset + 2);
      start += 2;
    } else if (length === 127) {
      length = Number(bytes.readBigUInt64BE(offset + 2));
      start += 8;
    }
    if (start + length > bytes.length) break;
    frames.push({ opcode: bytes[offset]! & 0x0f, payload: bytes.subarray(start, start + length) });
    offset = start + length;
  }
  return frames;
}

/** Opens a WebSocket through the proxy on a raw TLS socket, so that the test controls reading. */
async function openRawWebSocket(proxy: ProxyProcess): Promise<TLSSocket> {
  const socket = await openTls(proxy.port);
  socket.write(
    "GET /flood HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
  );
  return socket;
}

/** Builds a masked client text frame, as RFC 6455 requires of clients. */
function clientTextFrame(text: string): Buffer {
  const payload = Buffer.from(text);
  const mask = Buffer.from([1, 2, 3, 4]);
  const masked = payload.map((byte, i) => byte ^ mask[i % 4]!);
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]);
}

describe.each(PROXY_COMMANDS)("WebSocket slow reader ($name)", (command) => {
  let proxy: ProxyProcess;

  beforeAll(async () => {
    proxy = await startProxy(command, ["-to", `http://127.0.0.1:${backend.port}`]);
  });

  afterAll(() => proxy.stop());

  test("slow reader gets messages in order or 1013", async () => {
    const socket = await openRawWebSocket(proxy);
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    while (!Buffer.concat(chunks).includes("\r\n\r\n")) await Bun.sleep(10);
    socket.write(clientTextFrame("flood"));

    // Reads nothing for 3 s while the backend sends 60 MiB, then reads everything.
    socket.pause();
    await Bun.sleep(3_000);
    socket.resume();
    await Promise.race([once(socket, "close"), Bun.sleep(15_000)]);
    socket.destroy();

    const all = Buffer.concat(chunks);
    const frames = parseFrames(all.subarray(all.indexOf("\r\n\r\n") + 4));
    const data = frames.filter((frame) => frame.opcode === 2);
    const numbers = data.map((frame) => Number(frame.payload.subarray(0, 8).toString()));
    const close = frames.find((frame) => frame.opcode === 8);

    expect(numbers).toEqual([...Array(numbers.length).keys()]);
    expect(data.every((frame) => frame.payload.length === MESSAGE_BYTES)).toBe(true);
    if (numbers.length < MESSAGES) {
      expect(close?.payload.readUInt16BE(0)).toBe(1013);
      expect(close?.payload.subarray(2).toString()).toBe("client reads too slowly");
    }
  }, 30_000);
});
