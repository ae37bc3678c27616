#!/usr/bin/env bun
import { main } from "./cli.ts";
import { UserError } from "./errors.ts";

try {
  await main(process.argv.slice(2));
} catch (error) {
  if (!(error instanceof UserError)) throw error;
  process.stderr.write(`ssl-proxy: ${error.message}\n`);
  process.exit(error.exitCode);
}
