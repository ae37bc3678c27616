import { stripHopByHopHeaders } from "../headers.ts";
import {
  collectHeaders,
  sendWithDeadline,
  type UpstreamClient,
  type UpstreamTls,
} from "../upstream.ts";
import { denoApi, type DenoHttpClient } from "./api.ts";

/**
 * Creates the Deno connection pool for the backend: the -upstreamCA roots are trusted besides
 * the system's, and the client's Host header is sent as it is (Deno's fetch replaces it with
 * the backend's host:port unless `allowHost` is set).
 */
export function createDenoHttpClient(settings: UpstreamTls): DenoHttpClient {
  return denoApi().createHttpClient({
    allowHost: true,
    ...(settings.ca === undefined ? {} : { caCerts: [settings.ca] }),
  });
}

/**
 * Creates the client that sends requests to the backend under Deno: fetch through one Deno
 * HttpClient.
 *
 * Deno's fetch has no switch to keep a compressed body. In Deno 2.9.6 it decodes gzip and br
 * bodies but keeps Content-Encoding and the old Content-Length, unless the request's
 * Accept-Encoding is exactly "identity", so the backend is always asked for an uncompressed
 * body. A backend that compresses anyway is passed on as it sent the bytes.
 */
export function createDenoUpstreamClient(settings: UpstreamTls): UpstreamClient {
  const client = createDenoHttpClient(settings);
  return (url, init) => {
    const headers = collectHeaders(init.forEachHeader);
    headers.set("accept-encoding", "identity");
    const sent = sendWithDeadline(init, (signal) =>
      fetch(url, {
        client,
        method: init.method,
        headers,
        body: init.body,
        signal,
        // Hand redirects to the client instead of following them.
        redirect: "manual",
        duplex: "half",
      } as RequestInit),
    );
    // The response headers are edited on their way to the client, and are read-only on
    // Deno's Response.
    return sent.then(
      (res) => {
        const copy = new Headers(res.headers);
        stripHopByHopHeaders(copy);
        return new Response(res.body, { status: res.status, headers: copy });
      },
      (error: unknown) => {
        throw toConnectError(error);
      },
    );
  };
}

/** Deno 2.9.6 fetch failure messages and the Node error codes that describeConnectError recognizes. */
const CONNECT_ERROR_CODES: [RegExp, string][] = [
  [/Connection refused/i, "ECONNREFUSED"],
  [/dns error/i, "ENOTFOUND"],
  [/connection closed before message completed|connection reset/i, "ECONNRESET"],
  [/timed out/i, "ETIMEDOUT"],
  [/invalid peer certificate/i, "INVALID_PEER_CERTIFICATE"],
];

/**
 * Turns Deno's "fetch failed" TypeError into an error with the reason from its cause and a
 * Node-style `code`, so that the log names the cause as it does under Bun. Other errors, such
 * as an abort, are returned as they are.
 */
export function toConnectError(error: unknown): unknown {
  const cause = error instanceof TypeError ? error.cause : undefined;
  if (!(cause instanceof Error)) return error;
  // The message starts with "error sending request for url (...): client error (Connect): ".
  const reason = cause.message.replace(/^.*client error \(\w+\): /, "");
  const code = CONNECT_ERROR_CODES.find(([pattern]) => pattern.test(reason))?.[1];
  return Object.assign(new Error(reason, { cause: error }), code === undefined ? {} : { code });
}
