// Search playground: by text or vector, with a filter, limit and score
// threshold; "more like this" (recommend) from any hit; a 2-D map (PCA) of a
// sample of the collection coloured by its k-means clusters.

import { api, collectionPicker, fail, field, h, jsonText, say, select } from "../lib.js";
import { filterBuilder } from "../filter.js";
import { project2d } from "../pca.js";

const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];

export async function render(ctx, root) {
  const picker = await collectionPicker();
  if (picker.empty) {
    root.append(h("p", {}, "No collections yet."));
    return;
  }
  const mode = select([{ value: "text", label: "Text" }, { value: "vector", label: "Vector (JSON array)" }], { name: "mode" });
  const query = h("textarea", { name: "query", rows: 2, cols: 60, required: true, spellcheck: "false" });
  const limit = h("input", { name: "limit", type: "number", min: 1, max: 1000, value: 10 });
  const threshold = h("input", { name: "score-threshold", type: "number", step: "any", placeholder: "none" });
  const filter = filterBuilder("search");
  const results = h("div", { id: "search-results", "aria-live": "polite" });
  const form = h("form", { class: "card", id: "search-form" },
    h("div", { class: "row" }, picker.wrapper, field("Query by", mode), field("Limit", limit), field("Score threshold", threshold)),
    field("Query", query),
    filter.element,
    h("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = common();
    try {
      if (mode.value === "vector") body.vector = JSON.parse(query.value);
      else body.text = query.value;
      show(await api("POST", "/api/v1/vectors/search", body), "Results");
    } catch (error) {
      fail(error);
    }
  });

  function common() {
    const body = { collection: picker.control.value, limit: Number(limit.value) || 10 };
    if (threshold.value !== "") body.score_threshold = Number(threshold.value);
    const flt = filter.value();
    if (flt) body.filter = flt;
    return body;
  }

  async function moreLike(id) {
    try {
      const body = { ...common(), positive: [id] };
      show(await api("POST", "/api/v1/vectors/recommend", body), `More like ${id}`);
    } catch (error) {
      fail(error);
    }
  }

  function show(data, title) {
    results.replaceChildren(
      h("h3", {}, `${title}: ${data.points.length} hits in ${data.time_ms.toFixed(1)} ms`),
      h("ol", { class: "hits" }, data.points.map((p) =>
        h("li", { class: "hit" },
          h("div", { class: "row" },
            h("strong", {}, `score ${p.score.toFixed(4)}`),
            h("span", {}, ` id ${p.id} `),
            h("button", { type: "button", onclick: () => moreLike(p.id) }, `More like ${p.id}`)),
          jsonText(p.payload || {})))),
    );
  }

  // The map.
  const clusters = h("input", { name: "clusters", type: "number", min: 2, max: 10, value: 3 });
  const canvas = h("canvas", { id: "map-canvas", role: "img", "aria-label": "Map of a sample of the points, by cluster", width: 640, height: 420 });
  const mapInfo = h("p", { id: "map-info", "aria-live": "polite" });
  const mapForm = h("form", { class: "card", id: "map-form" },
    h("h3", {}, "Map of the collection"),
    h("p", {}, "A sample of up to 1000 points, projected on its two principal components and coloured by k-means cluster."),
    h("div", { class: "row" }, field("Clusters", clusters), h("button", { type: "submit" }, "Show map")),
    mapInfo,
    h("div", { class: "chart" }, canvas));
  let chart = null;
  mapForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const collection = picker.control.value;
    const name = encodeURIComponent(collection);
    try {
      const [sample, clustered] = await Promise.all([
        api("POST", `/api/v1/collections/${name}/points/scroll`, { page_size: 1000, with_vector: true, with_payload: false }),
        api("POST", "/api/v1/vectors/cluster", {
          collection, algorithm: "kmeans", num_clusters: Number(clusters.value) || 3,
          sample_size: 1000, representatives: 0, with_member_ids: true, with_payload: false,
        }),
      ]);
      const clusterOf = new Map();
      for (const c of clustered.clusters) for (const id of c.member_ids) clusterOf.set(String(id), c.id);
      const xy = project2d(sample.points.map((p) => p.vector));
      const groups = new Map();
      sample.points.forEach((p, i) => {
        const c = clusterOf.has(String(p.id)) ? clusterOf.get(String(p.id)) : -1;
        if (!groups.has(c)) groups.set(c, []);
        groups.get(c).push({ x: xy[i][0], y: xy[i][1], id: p.id });
      });
      const datasets = [...groups.entries()].sort((a, b) => a[0] - b[0]).map(([c, data]) => ({
        label: c < 0 ? "not clustered" : `cluster ${c}`,
        data,
        backgroundColor: c < 0 ? "#999999" : COLOURS[c % COLOURS.length],
      }));
      if (chart) chart.destroy();
      chart = new window.Chart(canvas, {
        type: "scatter",
        data: { datasets },
        options: { animation: false, plugins: { tooltip: { callbacks: { label: (item) => `id ${item.raw.id}` } } } },
      });
      mapInfo.textContent = `${sample.points.length} points in ${clustered.clusters.length} clusters.`;
      say("Map drawn.");
    } catch (error) {
      fail(error);
    }
  });

  root.append(form, results, mapForm);
}
