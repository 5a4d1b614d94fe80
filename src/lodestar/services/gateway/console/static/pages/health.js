// Health: each backend, its replicas (gRPC health, breaker state, requests in
// flight) and, with ViewMetrics, the gateway's request counts.

import { api, fail, h, jsonText, table } from "../lib.js";

export async function render(ctx, root) {
  const body = h("div", { id: "health" });
  root.append(h("button", { type: "button", onclick: () => load() }, "Refresh"), body);

  async function load() {
    try {
      const response = await api("GET", "/api/v1/health", undefined, { raw: true });
      const data = await response.json();
      if (!data.backends) throw new Error((data.error && data.error.message) || `HTTP ${response.status}`);
      body.replaceChildren(
        h("p", { id: "overall", class: `health-${data.status}` }, `Overall: ${data.status}`),
        ...Object.entries(data.backends).map(([name, backend]) =>
          table(`${name}: ${backend.status}`, ["Replica", "Serving", "Breaker", "In flight"],
            backend.replicas.map((r) => [r.address, r.serving, r.breaker, String(r.in_flight)]))),
      );
      if (ctx.can("ViewMetrics")) {
        const metrics = await api("GET", "/api/v1/metrics");
        body.append(h("h3", {}, "Gateway metrics"), jsonText(metrics));
      }
    } catch (error) {
      fail(error);
    }
  }
  await load();
}
