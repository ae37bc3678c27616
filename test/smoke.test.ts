import { describe, expect, test } from "bun:test";
import { PROXY_COMMANDS, startFlask, startProxy, run } from "./helpers.ts";

describe.each(PROXY_COMMANDS)("ssl-proxy ($name)", (command) => {
  test("serves a Flask app over HTTPS", async () => {
    const flask = await startFlask();
    const proxy = await startProxy(command, ["-to", flask.url]);
    try {
      const result = await run(["curl", "-sk", `https://127.0.0.1:${proxy.port}/hello`]);

      expect(result.stdout).toBe("Hello from Flask\n");
    } finally {
      expect(await proxy.stop()).toBe(0);
      flask.stop();
    }
  });
});
