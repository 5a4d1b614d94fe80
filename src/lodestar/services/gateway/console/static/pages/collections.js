// Collections: list, create (dimension or the served embedding model, distance,
// typed payload schema), details (config, payload indexes), delete with
// confirmation, and snapshots (create, list, restore, download).

import { api, ApiError, bytes, confirmAction, fail, field, h, jsonText, say, select, table } from "../lib.js";

const FIELD_TYPES = ["keyword", "text", "integer", "float", "datetime", "bool"];

export async function render(ctx, root) {
  const list = h("div", { id: "collection-list" });
  const details = h("div", { id: "collection-details" });
  if (ctx.can("ManageCollections")) root.append(createForm(() => refresh()));
  root.append(list, details);

  async function refresh() {
    const data = await api("GET", "/api/v1/collections?page_size=1000");
    const rows = data.collections.map((c) => [
      c.name,
      String(c.points_count),
      String(c.indexed_vectors_count),
      c.status,
      bytes(c.disk_bytes),
      h(
        "div",
        { class: "row" },
        h("button", { type: "button", onclick: () => showDetails(c.name) }, `Details of ${c.name}`),
        ctx.can("ManageCollections")
          ? h("button", { type: "button", class: "danger", onclick: () => remove(c.name) }, `Delete ${c.name}`)
          : "",
      ),
    ]);
    list.replaceChildren(
      rows.length
        ? table("Collections", ["Name", "Points", "Indexed", "Status", "Disk", "Actions"], rows)
        : h("p", {}, "No collections yet."),
    );
  }

  async function remove(name) {
    if (!(await confirmAction(`Delete collection ${name} and all its points?`))) return;
    try {
      await api("DELETE", `/api/v1/collections/${encodeURIComponent(name)}`);
      say(`Deleted ${name}.`);
      details.replaceChildren();
      await refresh();
    } catch (error) {
      fail(error);
    }
  }

  async function showDetails(name) {
    try {
      const c = await api("GET", `/api/v1/collections/${encodeURIComponent(name)}`);
      const schema = Object.entries(c.config.payload_schema || {});
      details.replaceChildren(
        h("h3", {}, `Collection ${c.name}`),
        h(
          "dl",
          {},
          h("dt", {}, "Dimension"), h("dd", {}, String(c.config.dimension)),
          h("dt", {}, "Distance"), h("dd", {}, c.config.distance),
          h("dt", {}, "Embedding model"), h("dd", {}, c.config.embedding_model || "—"),
          h("dt", {}, "Created"), h("dd", {}, c.create_time || "—"),
        ),
        schema.length
          ? table("Payload indexes", ["Field", "Type"], schema)
          : h("p", {}, "No payload indexes."),
        h("details", {}, h("summary", {}, "Configuration (JSON)"), jsonText(c.config)),
      );
      if (ctx.can("CreateSnapshots")) details.append(await snapshots(name, refresh));
      details.querySelector("h3").scrollIntoView();
    } catch (error) {
      fail(error);
    }
  }

  await refresh();
}

function createForm(done) {
  const name = h("input", { name: "name", required: true, maxlength: 255, autocomplete: "off" });
  const dimension = h("input", { name: "dimension", type: "number", min: 1, placeholder: "served model's" });
  const distance = select(["cosine", "dot", "euclid", "manhattan"], { name: "distance" });
  const schemaRows = h("div", { class: "schema-rows" });
  const addField = () => {
    const key = h("input", { name: "schema-key", autocomplete: "off" });
    const type = select(FIELD_TYPES, { name: "schema-type" });
    const row = h("div", { class: "row" }, field("Payload field", key), field("Type", type));
    row.append(h("button", { type: "button", onclick: () => row.remove() }, "Remove field"));
    schemaRows.append(row);
  };
  const form = h(
    "form",
    { id: "create-collection", class: "card" },
    h("h3", {}, "Create a collection"),
    h("div", { class: "row" }, field("Name", name), field("Dimension (empty: embedding model's)", dimension), field("Distance", distance)),
    schemaRows,
    h("div", { class: "row" },
      h("button", { type: "button", onclick: addField }, "Add payload field"),
      h("button", { type: "submit" }, "Create collection")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value.trim(), distance: distance.value, payload_schema: {} };
    if (dimension.value) body.dimension = Number(dimension.value);
    for (const row of schemaRows.children) {
      const key = row.querySelector("[name=schema-key]").value.trim();
      if (key) body.payload_schema[key] = row.querySelector("[name=schema-type]").value;
    }
    try {
      await api("POST", "/api/v1/collections", body);
      say(`Created ${body.name}.`);
      form.reset();
      schemaRows.replaceChildren();
      await done();
    } catch (error) {
      fail(error);
    }
  });
  return form;
}

async function snapshots(name, refreshCollections) {
  const box = h("div", { class: "card", id: "snapshots" }, h("h4", {}, "Snapshots"));
  const listing = h("div", {});
  const base = `/api/v1/collections/${encodeURIComponent(name)}`;
  async function refresh() {
    try {
      const data = await api("GET", `${base}/snapshots`);
      listing.replaceChildren(
        data.snapshots.length
          ? table(
              "Snapshots",
              ["Name", "Created", "Size", "Actions"],
              data.snapshots.map((s) => [
                s.name,
                s.create_time || "",
                bytes(s.size_bytes),
                h(
                  "div",
                  { class: "row" },
                  h("button", { type: "button", onclick: () => restore(s.name) }, `Restore ${s.name}`),
                  h("button", { type: "button", onclick: () => download(s.name) }, `Download ${s.name}`),
                ),
              ]),
            )
          : h("p", {}, "No snapshots."),
      );
    } catch (error) {
      listing.replaceChildren(h("p", {}, `Snapshots unavailable: ${error.message}`));
    }
  }
  async function restore(snapshot) {
    if (!(await confirmAction(`Replace the content of ${name} with snapshot ${snapshot}?`, "Restore"))) return;
    try {
      await api("POST", `${base}/snapshots/${encodeURIComponent(snapshot)}/restore`);
      say(`Restored ${snapshot}.`);
      await refreshCollections();
    } catch (error) {
      fail(error);
    }
  }
  // The file comes through fetch (the token in its Authorization header, never in a
  // URL) and is saved from an object URL by a temporary download link.
  async function download(snapshot) {
    try {
      const response = await api("GET", `${base}/snapshots/${encodeURIComponent(snapshot)}`, undefined, { raw: true });
      if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const link = h("a", { href: url, download: snapshot, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
      say(`Downloaded ${snapshot} (${bytes(blob.size)}).`);
    } catch (error) {
      fail(error);
    }
  }
  box.append(
    h("button", {
      type: "button",
      onclick: async () => {
        try {
          const s = await api("POST", `${base}/snapshot`);
          say(`Snapshot ${s.name} created.`);
          await refresh();
        } catch (error) {
          fail(error);
        }
      },
    }, "Create snapshot"),
    listing,
  );
  await refresh();
  return box;
}
