import { createConsola, type ConsolaInstance, type ConsolaReporter, type LogObject } from "consola";
import { formatWithOptions } from "node:util";

const LABELS: Record<string, string> = { warn: "warning: ", error: "error: ", fatal: "error: " };

/**
 * Writes each message as one line: info and success to stdout, warnings and errors to stderr
 * with a "warning:" or "error:" label, so that logs stay readable in a terminal and in journald.
 */
const lineReporter: ConsolaReporter = {
  log(logObj: LogObject) {
    const text = formatWithOptions({ colors: false }, ...logObj.args);
    const label = LABELS[logObj.type] ?? "";
    const stream = label === "" ? process.stdout : process.stderr;
    stream.write(`${label}${text}\n`);
  },
};

/** Creates the ssl-proxy logger; `level` follows consola (3 is info, 4 adds debug). */
export function createLogger(level = 3): ConsolaInstance {
  return createConsola({ level, reporters: [lineReporter], defaults: { tag: "ssl-proxy" } });
}
