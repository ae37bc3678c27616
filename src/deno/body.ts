/** A request whose body is cut off at the -maxBodySize limit, and whether it was reached. */
export interface LimitedRequest {
  req: Request;
  /** Tells whether the body went past the limit, which makes the upload to the backend fail. */
  exceeded(): boolean;
}

/**
 * Applies -maxBodySize under Deno, whose server has no body limit of its own: a declared
 * Content-Length over `maxBytes` gets 413 at once, and a body of unknown length is counted as
 * it streams to the backend. Past the limit the request's signal is aborted, so the proxy
 * handler cancels the upload as it does for a client that went away, and logs it only at the
 * debug level. `maxBytes` 0 means no limit.
 */
export function limitRequestBody(req: Request, maxBytes: number): Response | LimitedRequest {
  if (maxBytes === 0 || req.body === null) return { req, exceeded: () => false };
  if (Number(req.headers.get("content-length") ?? 0) > maxBytes) return tooLargeResponse();

  const abort = new AbortController();
  req.signal.addEventListener("abort", () => abort.abort(), { once: true });
  let bytes = 0;
  const counted = req.body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        bytes += chunk.byteLength;
        if (bytes <= maxBytes) return controller.enqueue(chunk);
        abort.abort();
        controller.error(new Error(`request body is larger than -maxBodySize (${maxBytes} bytes)`));
      },
    }),
  );
  const init = { body: counted, duplex: "half", signal: abort.signal } as RequestInit;
  return { req: new Request(req, init), exceeded: () => bytes > maxBytes };
}

/** Returns the 413 response for a body over -maxBodySize; the connection is closed after it. */
export function tooLargeResponse(): Response {
  return new Response("Payload Too Large\n", { status: 413, headers: { connection: "close" } });
}
