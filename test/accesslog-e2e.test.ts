import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { PROXY_COMMANDS, run, startProxy } from "./helpers.ts";

let backend: ReturnType<typeof Bun.serve>;

beforeAll(() => {
  backend = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: (req) =>
      new Response("x".repeat(1234), {
        status: new URL(req.url).pathname === "/missing" ? 404 : 200,
      }),
  });
});

afterAll(() => backend.stop(true));

/** One access-log line: time, client, method, path, status, bytes, duration, upstream. */
const ACCESS_LINE = /^(\S+Z) (\S+) (\S+) (\S+) (\d{3}) (\d+) (\d+)ms (\S+)$/m;

describe.each(PROXY_COMMANDS)("-accessLog ($name)", (command) => {
  test("logs one line per request", async () => {
    const upstream = `http://127.0.0.1:${backend.port}`;
    const proxy = await startProxy(command, ["-to", upstream, "-accessLog"]);

    await run(["curl", "-sk", `https://127.0.0.1:${proxy.port}/missing?q=1`]);
    await Bun.sleep(100);
    await proxy.stop();

    const line = ACCESS_LINE.exec(proxy.stdout());
    expect(line).not.toBeNull();
    const [, time, client, method, path, status, bytes, , logged] = line!;
    expect(Math.abs(Date.parse(time!) - Date.now())).toBeLessThan(10_000);
    expect(client).toBe("127.0.0.1");
    expect(method).toBe("GET");
    expect(path).toBe("/missing?q=1");
    expect(status).toBe("404");
    expect(bytes).toBe("1234");
    expect(logged).toBe(upstream);
  });

  test("logs nothing by default", async () => {
    const proxy = await startProxy(command, ["-to", `http://127.0.0.1:${backend.port}`]);

    await run(["curl", "-sk", `https://127.0.0.1:${proxy.port}/`]);
    await Bun.sleep(100);
    await proxy.stop();

    expect(ACCESS_LINE.test(proxy.stdout())).toBe(false);
  });
});
