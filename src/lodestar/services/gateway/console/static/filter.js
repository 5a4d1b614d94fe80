// A filter builder: rows of (payload key, test, value) combined with "all of"
// (must), producing the REST API's filter object.

import { field, h, select } from "./lib.js";

const TESTS = [
  { value: "keyword", label: "equals (text)" },
  { value: "integer", label: "equals (integer)" },
  { value: "boolean", label: "equals (true/false)" },
  { value: "text", label: "contains words" },
  { value: "gte", label: "at least" },
  { value: "lte", label: "at most" },
  { value: "is_empty", label: "is empty" },
];

function condition(key, test, raw) {
  if (test === "is_empty") return { is_empty: { key } };
  if (test === "gte" || test === "lte") return { key, range: { [test]: Number(raw) } };
  if (test === "integer") return { key, match: { integer: parseInt(raw, 10) } };
  if (test === "boolean") return { key, match: { boolean: raw.trim().toLowerCase() === "true" } };
  return { key, match: { [test]: raw } };
}

/** { element, value() } where value() is a filter or null when empty. */
export function filterBuilder(idPrefix) {
  const rows = h("div", { class: "filter-rows" });
  const add = () => {
    const key = h("input", { name: "filter-key", autocomplete: "off" });
    const test = select(TESTS, { name: "filter-test" });
    const value = h("input", { name: "filter-value", autocomplete: "off" });
    const row = h("div", { class: "row filter-row" }, field("Payload key", key), field("Test", test), field("Value", value));
    row.append(h("button", { type: "button", onclick: () => row.remove() }, "Remove condition"));
    rows.append(row);
    key.focus();
  };
  const element = h(
    "fieldset",
    { class: "filter", id: `${idPrefix}-filter` },
    h("legend", {}, "Filter (all conditions must hold)"),
    rows,
    h("button", { type: "button", onclick: add }, "Add condition"),
  );
  function value() {
    const must = [];
    for (const row of rows.children) {
      const key = row.querySelector("[name=filter-key]").value.trim();
      if (!key) continue;
      must.push(
        condition(key, row.querySelector("[name=filter-test]").value, row.querySelector("[name=filter-value]").value),
      );
    }
    return must.length ? { must } : null;
  }
  return { element, value };
}
