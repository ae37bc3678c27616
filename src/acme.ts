import * as acme from "acme-client";
import { lookup } from "node:dns/promises";
import { readFile } from "node:fs/promises";
import { Agent } from "node:https";
import { networkInterfaces } from "node:os";
import { rootCertificates } from "node:tls";
import type { ConsolaInstance } from "consola";
import type { ChallengeStore } from "./challenges.ts";
import type { AcmeSettings } from "./config.ts";
import { UserError } from "./errors.ts";
import { readCaCertificates } from "./certs.ts";
import { ensurePrivateFolder, readOptionalFile, writeFileAtomically } from "./files.ts";
import { saveCertificate, type AcmeStore, type StoredCertificate } from "./store.ts";

/** The ACME challenge types ssl-proxy can respond to, in the order it tries them. */
export type ChallengeType = "http-01" | "tls-alpn-01";

/** The challenge responders that obtainCertificate uses. */
export interface ChallengeResponders {
  store: ChallengeStore;
  /** Challenge types to try, in order; the next is tried when the CA cannot validate one. */
  types: ChallengeType[];
  /** Starts responding to TLS-ALPN-01 on the HTTPS port, and returns a handle to stop it. */
  startTlsAlpn?: () => Promise<{ close(): Promise<void> }>;
}

/** One certificate request to an ACME CA (RFC 8555). */
export interface CertificateOrder {
  settings: AcmeSettings;
  domains: readonly string[];
  store: AcmeStore;
  responders: ChallengeResponders;
  log: ConsolaInstance;
}

/** The maximum time a certificate order may take before ssl-proxy gives up. */
export const ORDER_TIMEOUT_MS = 110_000;

/** A challenge the CA tried and could not validate, with the CA's own reason. */
class ChallengeFailure extends Error {}

/**
 * Gets a certificate for `domains` from the ACME CA, trying each challenge type in turn, and
 * stores it. Throws a UserError with one line per cause when it cannot be had.
 */
export async function obtainCertificate(order: CertificateOrder): Promise<StoredCertificate> {
  const { settings, domains, log } = order;
  const names = domains.join(", ");
  const timeout = new Promise<never>((_, reject) => {
    const timer = setTimeout(() => {
      reject(
        new UserError(
          `${names}: no certificate from ${settings.directoryUrl} within ${ORDER_TIMEOUT_MS / 1000}s`,
        ),
      );
    }, ORDER_TIMEOUT_MS);
    timer.unref?.();
  });
  return Promise.race([requestCertificate(order), timeout])
    .catch((error: unknown) => {
      if (error instanceof UserError) throw error;
      throw new UserError(`${names}: ${describeAcmeError(error, settings.directoryUrl)}`, {
        cause: error,
      });
    })
    .finally(() => log.debug(`order for ${names} finished`));
}

async function requestCertificate(order: CertificateOrder): Promise<StoredCertificate> {
  const { settings, domains, store, responders, log } = order;
  await configureAcmeHttp(settings.caFile);
  const client = new acme.Client({
    directoryUrl: settings.directoryUrl,
    accountKey: await ensureAccountKey(store),
    backoffAttempts: 30,
    backoffMin: 250,
    backoffMax: 4000,
  });
  await ensureAccount(client, settings.email);

  const failures: string[] = [];
  for (const type of responders.types) {
    log.info(
      `acme: requesting a certificate for ${domains.join(", ")} from ${settings.directoryUrl} with ${type}`,
    );
    try {
      const { cert, key } = await orderWithChallenge(client, type, order);
      log.info(`acme: ${domains.join(", ")} validated with ${type}`);
      return await saveCertificate(store, cert, key);
    } catch (error) {
      if (!(error instanceof ChallengeFailure)) throw error;
      failures.push(`${type} failed: ${error.message}`);
      log.warn(`acme: ${type} failed: ${error.message}`);
    }
  }
  throw new UserError(
    `cannot get a certificate for ${domains.join(", ")} from ${settings.directoryUrl}:\n` +
      failures.map((line) => `  ${line}`).join("\n"),
  );
}

async function orderWithChallenge(
  client: acme.Client,
  type: ChallengeType,
  order: CertificateOrder,
) {
  const { domains, responders } = order;
  const certificateOrder = await client.createOrder({
    identifiers: domains.map((value) => ({ type: "dns", value })),
  });
  const authorizations = await client.getAuthorizations(certificateOrder);
  const responder = type === "tls-alpn-01" ? await responders.startTlsAlpn?.() : undefined;
  try {
    for (const authorization of authorizations) {
      if (authorization.status === "valid") continue;
      await validateAuthorization(client, type, authorization, responders.store);
    }
  } finally {
    await responder?.close();
  }

  const [key, csr] = await acme.crypto.createCsr(
    { altNames: [...domains] },
    await acme.crypto.createPrivateEcdsaKey(),
  );
  const finalized = await client.finalizeOrder(certificateOrder, csr);
  const cert = await client.getCertificate(finalized);
  return { cert, key: key.toString() };
}

async function validateAuthorization(
  client: acme.Client,
  type: ChallengeType,
  authorization: acme.Authorization,
  store: ChallengeStore,
): Promise<void> {
  const name = authorization.identifier.value;
  const challenge = authorization.challenges.find((candidate) => candidate.type === type);
  if (!challenge) throw new ChallengeFailure(`${name}: the CA does not offer ${type}`);

  const keyAuthorization = await client.getChallengeKeyAuthorization(challenge);
  if (type === "http-01") {
    store.httpTokens.set(challenge.token, keyAuthorization);
  } else {
    const [key, cert] = await acme.crypto.createAlpnCertificate(authorization, keyAuthorization);
    store.addTlsCertificate(name, cert.toString(), key.toString());
  }
  try {
    await client.completeChallenge(challenge);
    await client.waitForValidStatus(challenge);
  } catch (error) {
    // waitForValidStatus throws the CA's problem detail of an invalid challenge.
    throw new ChallengeFailure(
      `${name}: ${error instanceof Error ? error.message : String(error)}`,
    );
  } finally {
    store.httpTokens.delete(challenge.token);
    store.tlsContexts.delete(name);
  }
}

/**
 * Registers the account key with the CA, or finds the existing account (RFC 8555 section 7.3:
 * a new-account request with a known key returns that account). For an existing account
 * acme-client then sends the same fields as an update, which Pebble rejects when nothing
 * changes; the account is known at that point, so that rejection is ignored.
 */
async function ensureAccount(client: acme.Client, email: string | undefined): Promise<void> {
  try {
    await client.createAccount({
      termsOfServiceAgreed: true,
      ...(email ? { contact: [`mailto:${email}`] } : {}),
    });
  } catch (error) {
    if (!hasAccountUrl(client)) throw error;
  }
}

function hasAccountUrl(client: acme.Client): boolean {
  try {
    return client.getAccountUrl() !== "";
  } catch {
    return false;
  }
}

async function ensureAccountKey(store: AcmeStore): Promise<string> {
  const stored = await readOptionalFile(store.accountKeyPath);
  if (stored !== undefined) return stored;
  const key = (await acme.crypto.createPrivateEcdsaKey()).toString();
  await ensurePrivateFolder(store.folder);
  await writeFileAtomically(store.accountKeyPath, key, 0o600);
  return key;
}

let lastProblem: { type: string; detail: string; retryAfter: string | undefined } | undefined;
let configuredCaFile: string | undefined | null = null;

/** Settings of one request as acme-client's axios instance carries them. */
interface AcmeRequestConfig {
  retryAttempt?: number;
  retryValidateStatus?: ((status: number) => boolean) | null;
}

/**
 * Sets up acme-client's HTTP client once: trust for the -acmeCA roots, and a response handler
 * in place of acme-client's. Its handler loses the error code of a failed connection (it reads
 * the missing response) and waits out a 429's Retry-After, which can be hours. This one keeps
 * network errors as they are, retries a server error twice, reports rate limits at once, and
 * records the last RFC 7807 problem document so that errors can name rate limits.
 */
export async function configureAcmeHttp(caFile: string | undefined): Promise<void> {
  if (configuredCaFile === caFile) return;
  const http = acme.axios;
  if (caFile !== undefined) {
    const pem = await readCaCertificates("-acmeCA", caFile);
    http.defaults.httpsAgent = new Agent({ ca: [...rootCertificates, pem], keepAlive: true });
  }
  if (configuredCaFile === null) {
    // acme-client's request handler sets validateStatus to reject every response, so every
    // response arrives here, and its original validateStatus is kept as retryValidateStatus.
    http.interceptors.response.clear();
    http.interceptors.response.use(undefined, async (error) => {
      const config = error.config as (AcmeRequestConfig & object) | undefined;
      const response = error.response;
      if (!config || !response) throw error;
      recordProblem(response);
      config.retryAttempt = (config.retryAttempt ?? 0) + 1;
      if (response.status >= 500 && config.retryAttempt <= 2) {
        await new Promise((resolve) => setTimeout(resolve, 1000 * config.retryAttempt!));
        return http.request(config as Parameters<typeof http.request>[0]);
      }
      const validate = config.retryValidateStatus;
      if (!validate || validate(response.status)) return response;
      throw error;
    });
  }
  configuredCaFile = caFile;
}

function recordProblem(response: { headers: Record<string, unknown>; data?: unknown }): void {
  const contentType = String(response.headers["content-type"] ?? "");
  const data = response.data as { type?: unknown; detail?: unknown } | undefined;
  if (!contentType.startsWith("application/problem+json") || !data) return;
  lastProblem = {
    type: String(data.type ?? ""),
    detail: String(data.detail ?? ""),
    retryAfter: response.headers["retry-after"] as string | undefined,
  };
}

/** Describes a failed ACME request in words a user can act on. */
export function describeAcmeError(error: unknown, directoryUrl: string): string {
  const code = (error as { code?: string }).code;
  const message = error instanceof Error ? error.message : String(error);
  if (
    code === "ECONNREFUSED" ||
    code === "ENOTFOUND" ||
    code === "EAI_AGAIN" ||
    code === "ETIMEDOUT" ||
    code === "ECONNRESET"
  ) {
    return `cannot reach the ACME server ${directoryUrl}: ${code} (check -acmeDirectory and the network)`;
  }
  if (/certificate|self.signed|UNABLE_TO_VERIFY/i.test(message) && code !== undefined) {
    return `cannot verify the HTTPS certificate of the ACME server ${directoryUrl}: ${message} (a private CA needs -acmeCA FILE)`;
  }
  const problem = lastProblem;
  if (problem && message.includes(problem.detail)) {
    if (problem.type.endsWith(":rateLimited")) {
      const retry = problem.retryAfter
        ? ` (retry after ${describeRetryAfter(problem.retryAfter)})`
        : "";
      return `rate limited by the CA: ${problem.detail}${retry}`;
    }
    if (problem.type.endsWith(":rejectedIdentifier")) {
      return `the CA refuses to issue for this name: ${problem.detail}`;
    }
    return `the CA answered: ${problem.detail} (${problem.type})`;
  }
  return message;
}

function describeRetryAfter(value: string): string {
  const seconds = Number(value);
  const when = Number.isFinite(seconds) ? new Date(Date.now() + seconds * 1000) : new Date(value);
  return Number.isNaN(when.getTime()) ? value : when.toISOString();
}

/**
 * Warns when a name does not resolve to an address of this machine. It only warns, because a
 * NAT or a load balancer in front of the machine is a common and working setup.
 */
export async function warnIfNotLocal(
  domains: readonly string[],
  log: ConsolaInstance,
): Promise<void> {
  const local = new Set(
    Object.values(networkInterfaces()).flatMap((entries) =>
      (entries ?? []).map((entry) => entry.address),
    ),
  );
  await Promise.all(
    domains.map(async (name) => {
      try {
        const addresses = await lookup(name, { all: true });
        if (!addresses.some((entry) => local.has(entry.address))) {
          const list = addresses.map((entry) => entry.address).join(", ");
          log.warn(
            `${name} resolves to ${list}, which is not an address of this machine; validation fails unless that address forwards ports 80 or 443 here`,
          );
        }
      } catch (error) {
        log.warn(
          `${name} does not resolve here (${(error as NodeJS.ErrnoException).code}); the CA will probably fail to validate it`,
        );
      }
    }),
  );
}
