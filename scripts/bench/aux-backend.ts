// The benchmark's second backend, run as its own process: a WebSocket echo on /ws and an upload
// sink that reads the whole request body and responds with its length in bytes.
// Usage: bun scripts/bench/aux-backend.ts PORT

const port = Number(process.argv[2]);

Bun.serve({
  hostname: "127.0.0.1",
  port,
  development: false,
  // The 1 GiB upload must reach the sink whole, and Bun's default limit is 128 MiB.
  maxRequestBodySize: Number.MAX_SAFE_INTEGER,
  async fetch(req, server) {
    if (new URL(req.url).pathname === "/ws") {
      return server.upgrade(req)
        ? undefined
        : new Response("expected a WebSocket\n", { status: 400 });
    }
    let length = 0;
    if (req.body) for await (const chunk of req.body) length += chunk.byteLength;
    return new Response(String(length));
  },
  websocket: {
    message(ws, message) {
      ws.send(message);
    },
  },
});
console.log(`listening on 127.0.0.1:${port}`);
