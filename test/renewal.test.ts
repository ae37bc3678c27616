import { describe, expect, test } from "bun:test";
import { createConsola, type LogObject } from "consola";
import { renewalTime, retryDelayMs, scheduleRenewal } from "../src/renewal.ts";
import type { StoredCertificate } from "../src/store.ts";

const DAY_MS = 24 * 60 * 60 * 1000;

/** Makes the fields of a stored certificate that renewal looks at. */
function certificate(notBefore: number, notAfter: number, serialNumber = "01"): StoredCertificate {
  return {
    cert: "",
    key: "",
    certPath: "/nowhere/cert.pem",
    fingerprint: "",
    names: ["a.test"],
    notBefore: new Date(notBefore),
    notAfter: new Date(notAfter),
    serialNumber,
    issuer: "Test CA",
  };
}

/** Creates a logger that records messages by type instead of printing them. */
function recordingLogger() {
  const messages: { type: string; text: string }[] = [];
  const log = createConsola({
    level: 4,
    reporters: [
      {
        log: (entry: LogObject) => messages.push({ type: entry.type, text: entry.args.join(" ") }),
      },
    ],
  });
  return { log, messages };
}

describe("renewalTime", () => {
  test("leaves a third of a 90-day lifetime", () => {
    const issued = Date.parse("2027-01-01T00:00:00Z");

    const time = renewalTime(certificate(issued, issued + 90 * DAY_MS));

    expect(time.toISOString()).toBe("2027-03-02T00:00:00.000Z");
  });
});

describe("retryDelayMs", () => {
  test("doubles from one minute to one hour", () => {
    const cert = certificate(0, 90 * DAY_MS);

    const delays = [1, 2, 3, 4, 5, 6, 7, 8].map((attempt) => retryDelayMs(cert, attempt));

    expect(delays).toEqual([
      60_000, 120_000, 240_000, 480_000, 960_000, 1_920_000, 3_600_000, 3_600_000,
    ]);
  });

  test("fits a short lifetime", () => {
    const cert = certificate(0, 30_000);

    expect(retryDelayMs(cert, 1)).toBe(1000);
    expect(retryDelayMs(cert, 5)).toBe(3000);
  });
});

describe("scheduleRenewal", () => {
  test("retries a failed renewal with warnings", async () => {
    const now = Date.now();
    // Lifetime 3 s with 1 s left, so the renewal is due at once and retries wait 1 s.
    const current = certificate(now - 2000, now + 1000);
    const renewed = certificate(now, now + 90 * DAY_MS, "02");
    const { log, messages } = recordingLogger();
    const installed: StoredCertificate[] = [];
    let calls = 0;

    const cancel = scheduleRenewal({
      current,
      renew: async (served) => {
        calls++;
        expect(served.serialNumber).toBe("01");
        if (calls < 3) throw new Error(`CA unreachable (${calls})`);
        return renewed;
      },
      install: async (cert) => void installed.push(cert),
      log,
    });
    for (let waited = 0; installed.length === 0 && waited < 8000; waited += 50) await Bun.sleep(50);
    cancel();

    const warnings = messages.filter((message) => message.type === "warn").map((m) => m.text);
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toContain("attempt 1");
    expect(warnings[0]).toContain("CA unreachable (1)");
    expect(warnings[1]).toContain("attempt 2");
    expect(installed.map((cert) => cert.serialNumber)).toEqual(["02"]);
    expect(
      messages.some((message) => message.text.startsWith("certificate renewed: serial 02")),
    ).toBe(true);
  });

  test("uses the CA's suggested window", async () => {
    const now = Date.now();
    // Due in 90 days by the lifetime rule, but the CA's window is already open.
    const current = certificate(now, now + 135 * DAY_MS);
    const { log } = recordingLogger();
    let renewedAt = 0;

    const cancel = scheduleRenewal({
      current,
      renew: async () => {
        renewedAt = Date.now();
        return certificate(now, now + 135 * DAY_MS, "03");
      },
      install: async () => {},
      suggestWindow: async () => ({ start: new Date(now - 1000), end: new Date(now + 200) }),
      log,
    });
    for (let waited = 0; renewedAt === 0 && waited < 3000; waited += 20) await Bun.sleep(20);
    cancel();

    expect(renewedAt).toBeGreaterThan(0);
    expect(renewedAt - now).toBeLessThan(1500);
  });
});
