import type { ConsolaInstance } from "consola";
import { requestTarget, type ProxyHandler } from "./proxy.ts";

/**
 * Wraps a proxy handler so that each request writes one access-log line once its response has
 * been sent: time, client, method, path, status, body bytes, duration and upstream, as in
 * `2026-12-04T15:40:00.123Z 203.0.113.7 GET /app?x=1 200 5120 12ms http://127.0.0.1:5000`.
 * A WebSocket is logged with status 101 when it is set up. Counting the bytes puts a stream
 * stage in every response, so this is used only with -accessLog.
 */
export function withAccessLog(
  handler: ProxyHandler,
  upstream: string,
  log: ConsolaInstance,
): ProxyHandler {
  return async (req, connection) => {
    const started = performance.now();
    const res = await handler(req, connection);
    const write = (status: number, bytes: number) => {
      const duration = Math.round(performance.now() - started);
      const client = connection.address ?? "-";
      log.info(
        `${new Date().toISOString()} ${client} ${req.method} ${requestTarget(req.url)} ${status} ${bytes} ${duration}ms ${upstream}`,
      );
    };
    if (!res) {
      write(101, 0);
      return res;
    }
    if (!res.body) {
      write(res.status, 0);
      return res;
    }
    let bytes = 0;
    const counted = res.body.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          bytes += chunk.byteLength;
          controller.enqueue(chunk);
        },
        flush: () => write(res.status, bytes),
      }),
    );
    return new Response(counted, { status: res.status, headers: res.headers });
  };
}
