// Analytics as charts (Chart.js): search latency percentiles and volume per
// collection and over time, zero-result rate, popular queries, collection growth,
// usage per subject and route with tokens.

import { api, fail, field, h, select, table } from "../lib.js";

// Bucket widths of the timelines, in seconds (the API's `interval`).
const INTERVALS = [
  { value: "60", label: "per minute" },
  { value: "300", label: "per 5 minutes" },
  { value: "3600", label: "per hour" },
  { value: "86400", label: "per day" },
];

// A linear time axis in epoch milliseconds, labelled in local time (Chart.js's own
// time scale needs a date adapter, which the console does not load).
const TIME_AXIS = { type: "linear", ticks: { callback: (v) => new Date(v).toLocaleString() } };

/** The timelines' axis: from the first bucket's start to the last one's end. */
function timelineAxis(timeline, seconds) {
  const daily = seconds >= 86400;
  const format = daily ? { dateStyle: "medium" } : { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  // A tick at each bucket's start (Chart.js skips labels that do not fit).
  const ticks = { stepSize: seconds * 1000, callback: (v) => new Date(v).toLocaleString([], format) };
  const axis = { type: "linear", ticks };
  if (timeline.length) {
    axis.min = new Date(timeline[0].start_time).getTime();
    axis.max = new Date(timeline[timeline.length - 1].start_time).getTime() + seconds * 1000;
  }
  return axis;
}

function overTime(buckets, value) {
  return buckets.map((b) => ({ x: new Date(b.start_time).getTime(), y: value(b) }));
}

const charts = [];

function chart(id, label, config) {
  const canvas = h("canvas", { id, role: "img", "aria-label": label, width: 600, height: 280 });
  const box = h("figure", { class: "chart" }, canvas, h("figcaption", {}, label));
  charts.push(new window.Chart(canvas, { ...config, options: { animation: false, responsive: true, ...(config.options || {}) } }));
  return box;
}

export async function render(ctx, root) {
  while (charts.length) charts.pop().destroy();
  const body = h("div", { id: "analytics" });
  const reload = h("button", { type: "button", id: "analytics-refresh", onclick: () => load() }, "Refresh");
  const interval = select(INTERVALS, { id: "analytics-interval", name: "interval" });
  interval.value = sessionStorage.getItem("lodestar.analytics.interval") || "60";
  interval.addEventListener("change", () => {
    sessionStorage.setItem("lodestar.analytics.interval", interval.value);
    load();
  });
  root.append(h("div", { class: "row" }, field("Timeline", interval), reload), body);

  async function load() {
    try {
      const [search, vectors, usage] = await Promise.all([
        api("GET", `/api/v1/analytics/search?top_queries=10&interval=${encodeURIComponent(interval.value)}`),
        api("GET", "/api/v1/analytics/vectors"),
        api("GET", "/api/v1/analytics/usage"),
      ]);
      while (charts.length) charts.pop().destroy();
      const total = search.total;
      const per = search.collections;
      const timeline = search.timeline;
      const seconds = Number(interval.value);
      body.replaceChildren(
        h("p", { id: "search-total" },
          `Searches: ${total.search_count} · p50 ${total.latency_p50_ms.toFixed(1)} ms · p95 ${total.latency_p95_ms.toFixed(1)} ms · ` +
          `p99 ${total.latency_p99_ms.toFixed(1)} ms · zero-result rate ${(100 * total.zero_result_rate).toFixed(1)}%`),
        h("div", { class: "charts" },
          chart("chart-latency-time", "Search latency over time (ms)", {
            type: "line",
            data: {
              datasets: [
                { label: "p50", data: overTime(timeline, (b) => b.latency_p50_ms) },
                { label: "p95", data: overTime(timeline, (b) => b.latency_p95_ms) },
                { label: "p99", data: overTime(timeline, (b) => b.latency_p99_ms) },
              ],
            },
            options: { scales: { x: timelineAxis(timeline, seconds), y: { min: 0 } } },
          }),
          chart("chart-volume-time", "Searches and zero-result rate over time", {
            type: "line",
            data: {
              datasets: [
                { label: "searches", data: overTime(timeline, (b) => b.search_count), yAxisID: "y" },
                { label: "zero-result rate (%)", data: overTime(timeline, (b) => 100 * b.zero_result_rate), yAxisID: "y1" },
              ],
            },
            options: { scales: { x: timelineAxis(timeline, seconds), y: { position: "left", min: 0, ticks: { precision: 0 } }, y1: { position: "right", min: 0, max: 100 } } },
          }),
          chart("chart-latency", "Search latency by collection (ms)", {
            type: "bar",
            data: {
              labels: per.map((c) => c.collection),
              datasets: [
                { label: "p50", data: per.map((c) => c.latency_p50_ms) },
                { label: "p95", data: per.map((c) => c.latency_p95_ms) },
                { label: "p99", data: per.map((c) => c.latency_p99_ms) },
              ],
            },
          }),
          chart("chart-volume", "Searches and zero-result rate by collection", {
            type: "bar",
            data: {
              labels: per.map((c) => c.collection),
              datasets: [
                { label: "searches", data: per.map((c) => c.search_count), yAxisID: "y" },
                { label: "zero-result rate (%)", data: per.map((c) => 100 * c.zero_result_rate), yAxisID: "y1", type: "line" },
              ],
            },
            options: { scales: { y: { position: "left" }, y1: { position: "right", min: 0, max: 100 } } },
          }),
          chart("chart-queries", "Popular queries", {
            type: "bar",
            data: {
              labels: search.popular_queries.map((q) => q.query_text),
              datasets: [{ label: "count", data: search.popular_queries.map((q) => q.count) }],
            },
            options: { indexAxis: "y" },
          }),
          chart("chart-growth", "Collection growth (points)", {
            type: "line",
            data: {
              datasets: vectors.collections.map((c) => ({
                label: c.collection,
                data: (c.samples.length ? c.samples : [{ time: new Date().toISOString(), points_count: c.points_count }])
                  .map((s) => ({ x: new Date(s.time).getTime(), y: s.points_count })),
              })),
            },
            options: { parsing: true, scales: { x: TIME_AXIS } },
          }),
          chart("chart-usage", "Requests and tokens per subject and route", {
            type: "bar",
            data: {
              labels: usage.usage.map((u) => `${u.subject || "anonymous"} ${u.route}`),
              datasets: [
                { label: "requests", data: usage.usage.map((u) => u.request_count) },
                { label: "errors", data: usage.usage.map((u) => u.error_count) },
                { label: "prompt tokens", data: usage.usage.map((u) => u.prompt_tokens) },
                { label: "completion tokens", data: usage.usage.map((u) => u.completion_tokens) },
              ],
            },
            options: { indexAxis: "y" },
          }),
        ),
        table("Popular queries", ["Query", "Count"], search.popular_queries.map((q) => [q.query_text, String(q.count)])),
      );
    } catch (error) {
      fail(error);
    }
  }

  await load();
}
