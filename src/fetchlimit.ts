/**
 * Bun's fetch runs at most 256 requests at a time per process (BUN_CONFIG_MAX_HTTP_REQUESTS),
 * so request 257 to an https:// backend waits while 256 long polls or event streams stay open.
 * Bun reads the variable only when the process starts, so it is set here and the process
 * replaced by a fresh copy of itself with the same arguments. Backends over http:// and Unix
 * sockets use ssl-proxy's own client (src/http1.ts), which has no such limit.
 */
const FETCH_LIMIT_VARIABLE = "BUN_CONFIG_MAX_HTTP_REQUESTS";
/** The maximum that Bun accepts; each request in flight also uses a client connection. */
const FETCH_LIMIT = "65535";

/**
 * Replaces the process with itself, the fetch limit raised, unless the variable is set
 * already (by the user, or by the first start). Returns only when nothing was replaced.
 */
export function raiseFetchLimit(): void {
  const env = process.env;
  if (typeof Bun === "undefined" || env[FETCH_LIMIT_VARIABLE] !== undefined) return;
  try {
    process.execve!(process.execPath, ownArgv(), { ...env, [FETCH_LIMIT_VARIABLE]: FETCH_LIMIT });
  } catch {
    // Without execve (a locked-down system), ssl-proxy runs with Bun's default limit.
  }
}

/** Builds the argument vector that starts this program again with the same arguments, for execve. */
export function ownArgv(): string[] {
  // In a compiled executable argv[1] is the embedded entry point, which Bun adds by itself.
  const [first = process.execPath, entry = "", ...args] = process.argv;
  return entry.startsWith("/$bunfs/") ? [first, ...args] : [first, entry, ...args];
}
