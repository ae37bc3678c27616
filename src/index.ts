#!/usr/bin/env bun
import { raiseFetchLimit } from "./fetchlimit.ts";

raiseFetchLimit();
// Loaded after raiseFetchLimit, which may replace the process before anything else is loaded.
const { main } = await import("./cli.ts");
const { UserError } = await import("./errors.ts");

try {
  await main(process.argv.slice(2));
} catch (error) {
  if (!(error instanceof UserError)) throw error;
  process.stderr.write(`ssl-proxy: ${error.message}\n`);
  process.exit(error.exitCode);
}
