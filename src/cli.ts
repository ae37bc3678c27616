import { defineCommand, runCommand } from "citty";
import {
  LETS_ENCRYPT_DIRECTORY,
  LETS_ENCRYPT_STAGING_DIRECTORY,
  resolveConfig,
  type FlagValues,
} from "./config.ts";
import { translateGoFlags, type FlagKinds } from "./flags.ts";
import { createLogger } from "./log.ts";
import { runProxy } from "./run.ts";
import { VERSION } from "./version.ts";

/** The command-line flags, each accepted as -flag value, -flag=value, --flag value and --flag=value. */
export const FLAGS = {
  from: {
    type: "string",
    default: "127.0.0.1:4430",
    valueHint: "host:port",
    description: "Address to serve HTTPS on; :443 or 0.0.0.0:443 serves every interface",
  },
  to: {
    type: "string",
    default: "http://127.0.0.1:80",
    valueHint: "url",
    description:
      "Backend to forward requests to: host:port or an http(s) URL with an optional path",
  },
  cert: {
    type: "string",
    valueHint: "file",
    description: "PEM certificate chain to serve, instead of a generated one (needs -key)",
  },
  key: { type: "string", valueHint: "file", description: "PEM private key of -cert (needs -cert)" },
  domain: {
    type: "string",
    valueHint: "names",
    description:
      "Public DNS name(s), comma-separated, to get a certificate for through ACME; using it means accepting the CA's terms of service",
  },
  email: {
    type: "string",
    valueHint: "address",
    description: "Contact address for the ACME account, to which the CA may send expiry warnings",
  },
  acmeDirectory: {
    type: "string",
    valueHint: "url",
    description: `Directory URL of the ACME certificate authority (default "${LETS_ENCRYPT_DIRECTORY}")`,
  },
  staging: {
    type: "boolean",
    default: false,
    description: `Use Let's Encrypt's staging CA (${LETS_ENCRYPT_STAGING_DIRECTORY}), which browsers do not trust`,
  },
  acmeCA: {
    type: "string",
    valueHint: "file",
    description: "PEM file of extra root certificates to trust for the ACME server's own HTTPS",
  },
  redirectHTTP: {
    type: "boolean",
    default: false,
    description: "Redirect plain HTTP on -httpFrom to HTTPS",
  },
  httpFrom: {
    type: "string",
    default: ":80",
    valueHint: "host:port",
    description: "Address of the plain-HTTP listener",
  },
  dataDir: {
    type: "string",
    valueHint: "dir",
    description:
      "Folder for generated keys and certificates (default ~/.ssl-proxy, or $SSL_PROXY_DATA_DIR)",
  },
  upstreamTimeout: {
    type: "string",
    default: "60s",
    valueHint: "duration",
    description:
      "Maximum wait for the backend's response headers before the client gets a 504; 0 waits forever",
  },
  idleTimeout: {
    type: "string",
    default: "120s",
    valueHint: "duration",
    description:
      "Close a connection after this long without traffic: idle keep-alive, or a pause in a streamed response (Server-Sent Events are never cut); at most 255s, 0 never",
  },
  shutdownTimeout: {
    type: "string",
    default: "10s",
    valueHint: "duration",
    description: "Maximum wait for open requests after SIGINT or SIGTERM",
  },
  upstreamCA: {
    type: "string",
    valueHint: "file",
    description: "PEM file of extra root certificates to trust for an https:// -to backend",
  },
  upstreamInsecure: {
    type: "boolean",
    default: false,
    description:
      "Do not check the certificate of an https:// -to backend (insecure: anyone on the path can impersonate it)",
  },
  maxBodySize: {
    type: "string",
    default: "0",
    valueHint: "size",
    description:
      "Largest request body accepted, such as 100MB or 1GiB; bigger uploads get 413, and 0 means no limit",
  },
  user: {
    type: "string",
    valueHint: "name",
    description:
      "When started as root: the user to serve as once the ports are bound (default $SUDO_USER); root stays root, with a warning",
  },
  hsts: {
    type: "boolean",
    default: false,
    description:
      "Send Strict-Transport-Security (one year) so that browsers use only HTTPS for this host; only with a certificate browsers trust",
  },
  accessLog: {
    type: "boolean",
    default: false,
    description:
      "Print one line per request: time, client, method, path, status, bytes, duration, upstream",
  },
  version: { type: "boolean", description: "Print the version and exit" },
} as const;

const command = defineCommand({
  meta: {
    name: "ssl-proxy",
    version: VERSION,
    description: "Serve a local HTTP app over HTTPS with one command",
  },
  args: FLAGS,
  async run({ args }) {
    const notices: string[] = [];
    const config = resolveConfig(args as unknown as FlagValues, process.env, notices);
    const log = createLogger();
    for (const notice of notices) log.info(notice);
    await runProxy(config, log);
  },
});

const FLAG_KINDS: FlagKinds = {
  ...Object.fromEntries(Object.entries(FLAGS).map(([name, flag]) => [name, flag.type])),
  help: "boolean",
  h: "boolean",
};

/**
 * Runs ssl-proxy with the given arguments (without the program name). Help and version are
 * printed here; bad input throws a UserError with exit status 2 before anything is bound.
 */
export async function main(argv: readonly string[]): Promise<void> {
  const rawArgs = translateGoFlags(argv, FLAG_KINDS);
  if (rawArgs.includes("--help") || rawArgs.includes("--h")) {
    console.log(renderHelp());
    return;
  }
  if (rawArgs.includes("--version")) {
    console.log(`ssl-proxy ${VERSION}`);
    return;
  }
  await runCommand(command, { rawArgs });
}

/** Renders the help text in the layout of Go's flag package, which the original tool's users know. */
export function renderHelp(): string {
  const lines = [
    "ssl-proxy: serve a local HTTP app over HTTPS with one command",
    "",
    "Usage: ssl-proxy [flags]",
    "",
    "Flags:",
  ];
  for (const [name, flag] of Object.entries(FLAGS)) {
    const hint = "valueHint" in flag ? ` ${flag.valueHint}` : "";
    const fallback =
      "default" in flag && flag.type === "string" ? ` (default "${flag.default}")` : "";
    lines.push(`  -${name}${hint}`, `        ${flag.description}${fallback}`);
  }
  lines.push("  -h, -help", "        Print this help and exit", "", HELP_EXAMPLES);
  return lines.join("\n");
}

const HELP_EXAMPLES = `Examples:

  ssl-proxy -from 127.0.0.1:4430 -to 127.0.0.1:5000
      HTTPS on port 4430 with a self-signed certificate, forwarding to a local app on port 5000.

  ssl-proxy -from 0.0.0.0:443 -to 127.0.0.1:5000 -cert fullchain.pem -key privkey.pem
      HTTPS on port 443 for every interface, with your own certificate and key.

  ssl-proxy -from 0.0.0.0:443 -to 127.0.0.1:5000 -domain vm.example.edu -redirectHTTP
      A certificate from Let's Encrypt for vm.example.edu, renewed automatically, and a
      redirect from http://vm.example.edu to https://vm.example.edu.

Flags may be written -flag value, -flag=value, --flag value or --flag=value.`;
