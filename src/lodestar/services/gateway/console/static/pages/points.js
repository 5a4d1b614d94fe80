// Points: a paginated browser with a filter builder, payload view and edit,
// delete. Uses the scroll and count routes.

import { api, collectionPicker, confirmAction, fail, field, h, jsonText, say, select, table } from "../lib.js";
import { filterBuilder } from "../filter.js";

export async function render(ctx, root) {
  const picker = await collectionPicker();
  if (picker.empty) {
    root.append(h("p", {}, "No collections yet."));
    return;
  }
  const filter = filterBuilder("points");
  const pageSize = select(["10", "25", "50", "100"], { name: "page-size" });
  pageSize.value = "25";
  const summary = h("p", { id: "points-count", "aria-live": "polite" });
  const results = h("div", { id: "points-list" });
  const prev = h("button", { type: "button", disabled: true }, "Previous page");
  const next = h("button", { type: "button", disabled: true }, "Next page");
  const tokens = [""];
  let page = 0;

  const form = h(
    "form",
    { class: "card" },
    h("div", { class: "row" }, picker.wrapper, field("Page size", pageSize)),
    filter.element,
    h("button", { type: "submit" }, "Show points"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    tokens.length = 1;
    page = 0;
    load();
  });
  prev.addEventListener("click", () => {
    page = Math.max(0, page - 1);
    load();
  });
  next.addEventListener("click", () => {
    page += 1;
    load();
  });
  root.append(form, summary, results, h("div", { class: "row" }, prev, next));

  async function load() {
    const name = encodeURIComponent(picker.control.value);
    const flt = filter.value();
    const body = { page_size: Number(pageSize.value), page_token: tokens[page] };
    if (flt) body.filter = flt;
    try {
      const [data, count] = await Promise.all([
        api("POST", `/api/v1/collections/${name}/points/scroll`, body),
        api("POST", `/api/v1/collections/${name}/points/count`, flt ? { filter: flt } : {}),
      ]);
      tokens[page + 1] = data.next_page_token;
      summary.textContent = `${count.count} matching points; page ${page + 1}.`;
      prev.disabled = page === 0;
      next.disabled = !data.next_page_token;
      results.replaceChildren(
        table(
          "Points",
          ["Id", "Payload", "Actions"],
          data.points.map((p) => [String(p.id), jsonText(p.payload || {}), actions(p)]),
        ),
      );
    } catch (error) {
      fail(error);
    }
  }

  function actions(point) {
    const cell = h("div", { class: "row" });
    const collection = picker.control.value;
    const url = `/api/v1/vectors/${encodeURIComponent(point.id)}?collection=${encodeURIComponent(collection)}`;
    if (ctx.can("UpdateVectors")) {
      cell.append(
        h("button", {
          type: "button",
          onclick: () => {
            const editor = h("textarea", { rows: 8, cols: 60, spellcheck: "false" });
            editor.value = JSON.stringify(point.payload || {}, null, 2);
            const save = h("button", { type: "submit" }, "Save payload");
            const edit = h("form", { class: "edit" }, field(`Payload of point ${point.id} (JSON)`, editor), save);
            edit.addEventListener("submit", async (event) => {
              event.preventDefault();
              try {
                const payload = JSON.parse(editor.value);
                await api("PUT", url, { payload, replace_payload: true });
                say(`Saved point ${point.id}.`);
                await load();
              } catch (error) {
                fail(error);
              }
            });
            cell.append(edit);
            editor.focus();
          },
          "aria-label": `Edit payload of ${point.id}`,
        }, "Edit payload"),
      );
    }
    if (ctx.can("DeleteVectors")) {
      cell.append(
        h("button", {
          type: "button",
          class: "danger",
          onclick: async () => {
            if (!(await confirmAction(`Delete point ${point.id}?`))) return;
            try {
              await api("DELETE", url);
              say(`Deleted point ${point.id}.`);
              await load();
            } catch (error) {
              fail(error);
            }
          },
          "aria-label": `Delete point ${point.id}`,
        }, "Delete"),
      );
    }
    return cell;
  }

  await load();
}
