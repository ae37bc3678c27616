// Medians, ratios and targets of a benchmark run, as a Markdown table and as JSON.
import { CONTENDER_NAMES, type ContenderName } from "./contenders.ts";
import { median, SCENARIOS, type Metric, type Scenario } from "./scenarios.ts";

/** Every value measured: scenario id, then contender, then metric key, one entry per round. */
export type Samples = Record<string, Partial<Record<ContenderName, Record<string, number[]>>>>;

/** Median values of one metric by contender. */
type MedianRow = Partial<Record<ContenderName, number>>;

/** A goal from the issue that a metric's medians either meet or miss. */
interface Target {
  scenario: string;
  metric: string;
  text: string;
  isMet(row: MedianRow): boolean;
}

const MAX_UPLOAD_RSS_MIB = 100;
const MAX_IDLE_RSS_MIB = 150;
const MAX_STARTUP_MS = 50;

const TARGETS: Target[] = [
  {
    scenario: "keep-alive",
    metric: "rps",
    text: ">= 1.0x nginx and >= 3x Caddy",
    isMet: (row) => row["ssl-proxy"]! >= row.nginx! && row["ssl-proxy"]! >= 3 * row.caddy!,
  },
  {
    scenario: "keep-alive",
    metric: "p99",
    text: "<= nginx",
    isMet: (row) => row["ssl-proxy"]! <= row.nginx!,
  },
  {
    scenario: "new-connection",
    metric: "handshakes",
    text: ">= 1.0x nginx",
    isMet: (row) => row["ssl-proxy"]! >= row.nginx!,
  },
  {
    scenario: "download",
    metric: "mbps",
    text: ">= 1.0x nginx",
    isMet: (row) => row["ssl-proxy"]! >= row.nginx!,
  },
  {
    scenario: "upload",
    metric: "peakRss",
    text: `< ${MAX_UPLOAD_RSS_MIB} MiB`,
    isMet: (row) => row["ssl-proxy"]! < MAX_UPLOAD_RSS_MIB,
  },
  {
    scenario: "idle",
    metric: "rss",
    text: `< ${MAX_IDLE_RSS_MIB} MiB`,
    isMet: (row) => row["ssl-proxy"]! < MAX_IDLE_RSS_MIB,
  },
  {
    scenario: "startup",
    metric: "ms",
    text: `< ${MAX_STARTUP_MS} ms`,
    isMet: (row) => row["ssl-proxy"]! < MAX_STARTUP_MS,
  },
];

/** One line of the summary: a metric's medians, the ratios and the target's state. */
export interface SummaryRow {
  scenario: string;
  metric: string;
  label: string;
  unit: string;
  better: Metric["better"];
  medians: MedianRow;
  /** ssl-proxy's median divided by nginx's and by Caddy's. */
  ratioNginx: number;
  ratioCaddy: number;
  target: string | undefined;
  met: boolean | undefined;
}

/** Computes the medians, ratios and target states of every metric that has samples. */
export function summarize(samples: Samples, scenarios: Scenario[] = SCENARIOS): SummaryRow[] {
  const rows: SummaryRow[] = [];
  for (const scenario of scenarios) {
    const byContender = samples[scenario.id];
    if (!byContender) continue;
    for (const metric of scenario.metrics) {
      const medians: MedianRow = {};
      for (const name of CONTENDER_NAMES) {
        const values = byContender[name]?.[metric.key];
        if (values && values.length > 0) medians[name] = median(values);
      }
      const target = TARGETS.find((t) => t.scenario === scenario.id && t.metric === metric.key);
      rows.push({
        scenario: scenario.id,
        metric: metric.key,
        label: metric.label,
        unit: metric.unit,
        better: metric.better,
        medians,
        ratioNginx: (medians["ssl-proxy"] ?? NaN) / (medians.nginx ?? NaN),
        ratioCaddy: (medians["ssl-proxy"] ?? NaN) / (medians.caddy ?? NaN),
        target: target?.text,
        met: target ? hasAll(medians) && target.isMet(medians) : undefined,
      });
    }
  }
  return rows;
}

function hasAll(row: MedianRow): boolean {
  return row["ssl-proxy"] !== undefined && row.nginx !== undefined && row.caddy !== undefined;
}

/** Formats the summary as a Markdown table. */
export function formatTable(rows: SummaryRow[]): string {
  const header = ["metric", "unit", ...CONTENDER_NAMES, "ssl-proxy/nginx", "ssl-proxy/Caddy"];
  const lines = [
    `| ${header.join(" | ")} | target |`,
    `|${header.map(() => "---").join("|")}|---|`,
  ];
  for (const row of rows) {
    const cells = [
      `${row.label} (${row.better} is better)`,
      row.unit,
      ...CONTENDER_NAMES.map((name) => formatNumber(row.medians[name])),
      formatRatio(row.ratioNginx),
      formatRatio(row.ratioCaddy),
      row.target === undefined ? "" : `${row.target}: ${row.met ? "met" : "missed"}`,
    ];
    lines.push(`| ${cells.join(" | ")} |`);
  }
  return lines.join("\n");
}

function formatNumber(value: number | undefined): string {
  if (value === undefined || Number.isNaN(value)) return "-";
  if (Math.abs(value) >= 100) return Math.round(value).toLocaleString("en-US");
  if (Math.abs(value) >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

function formatRatio(value: number): string {
  return Number.isFinite(value) ? `${value.toFixed(2)}x` : "-";
}
