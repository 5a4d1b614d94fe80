// Documents: upload with progress (a job when the gateway answers 202), list,
// open (metadata and chunks, as text), delete.

import { api, collectionPicker, confirmAction, fail, field, h, hasRoute, jsonText, notAvailable, say, table, token } from "../lib.js";

const DOCUMENTS = "/api/v1/collections/{name}/documents";
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

export async function render(ctx, root) {
  if (!(await hasRoute("GET", DOCUMENTS))) {
    root.append(notAvailable("Documents"));
    return;
  }
  const picker = await collectionPicker();
  if (picker.empty) {
    root.append(h("p", {}, "No collections yet."));
    return;
  }
  const base = () => `/api/v1/collections/${encodeURIComponent(picker.control.value)}/documents`;
  const list = h("div", { id: "document-list" });
  const opened = h("div", { id: "document-view" });
  const progress = h("progress", { id: "upload-progress", max: 100, value: 0, hidden: true });
  const progressLabel = h("span", { id: "upload-state", "aria-live": "polite" });
  picker.control.addEventListener("change", refresh);
  root.append(h("div", { class: "row" }, picker.wrapper));

  if (ctx.can("InsertVectors")) {
    const file = h("input", { type: "file", name: "file", accept: ".txt,.md,.markdown,.html,.htm,.pdf", required: true });
    const form = h("form", { class: "card", id: "upload-form" },
      h("h3", {}, "Upload a document"),
      field("File (text, Markdown, HTML or PDF)", file),
      h("button", { type: "submit" }, "Upload"),
      h("div", { class: "row" }, progress, progressLabel));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!file.files.length) return;
      try {
        await upload(file.files[0]);
        form.reset();
      } catch (error) {
        fail(error);
      }
    });
    root.append(form);
  }
  root.append(list, opened);

  function upload(chosen) {
    // XMLHttpRequest: fetch cannot report upload progress.
    return new Promise((resolve, reject) => {
      const data = new FormData();
      data.append("file", chosen, chosen.name);
      const request = new XMLHttpRequest();
      request.open("POST", base());
      request.setRequestHeader("Authorization", `Bearer ${token()}`);
      progress.hidden = false;
      progress.value = 0;
      progressLabel.textContent = `Uploading ${chosen.name}…`;
      request.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) progress.value = Math.round((100 * e.loaded) / e.total);
      });
      request.addEventListener("load", async () => {
        let body = null;
        try {
          body = JSON.parse(request.responseText || "null");
        } catch {
          body = null;
        }
        if (request.status >= 400) {
          progressLabel.textContent = "Upload failed.";
          reject(new Error((body && body.error && body.error.message) || `HTTP ${request.status}`));
          return;
        }
        try {
          const job = body && body.job && body.job.id;
          if (request.status === 202 && job) await follow(job);
          progress.value = 100;
          progressLabel.textContent = `${chosen.name} uploaded.`;
          say(`Uploaded ${chosen.name}.`);
          await refresh();
          resolve();
        } catch (error) {
          progressLabel.textContent = "Upload failed.";
          reject(error);
        }
      });
      request.addEventListener("error", () => reject(new Error("the upload failed")));
      request.send(data);
    });
  }

  async function follow(jobId) {
    for (;;) {
      const job = await api("GET", `/api/v1/jobs/${encodeURIComponent(jobId)}`);
      const progressed = job.progress || {};
      const done = Number(progressed.chunks_done || 0);
      const total = Number(progressed.chunks_total || 0);
      if (total) progress.value = Math.round((100 * done) / total);
      progressLabel.textContent = `Job ${jobId}: ${job.status}${total ? ` (${done} of ${total} chunks)` : ""}`;
      if (FINISHED.has(String(job.status).toLowerCase())) {
        if (job.status !== "succeeded") throw new Error(`job ${jobId} ${job.status}: ${job.error || ""}`);
        return;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  async function refresh() {
    try {
      const data = await api("GET", `${base()}?page_size=100`);
      const docs = data.documents;
      list.replaceChildren(
        docs.length
          ? table("Documents", ["Title", "Id", "Chunks", "Status", "Actions"], docs.map((d) => [
              d.title || d.source || String(d.id),
              String(d.id),
              String(d.chunks),
              d.status,
              h("div", { class: "row" },
                h("button", { type: "button", onclick: () => open(d.id) }, `Open ${d.title || d.id}`),
                ctx.can("DeleteVectors")
                  ? h("button", { type: "button", class: "danger", onclick: () => remove(d) }, `Delete ${d.title || d.id}`)
                  : ""),
            ]))
          : h("p", {}, "No documents in this collection."),
      );
    } catch (error) {
      if (error.status === 404) list.replaceChildren(h("p", {}, "No documents in this collection."));
      else fail(error);
    }
  }

  async function open(id) {
    try {
      const data = await api("GET", `${base()}/${encodeURIComponent(id)}`);
      const doc = data.document;
      const chunks = data.chunks || [];
      opened.replaceChildren(
        h("h3", {}, `Document ${doc.title || doc.id}`),
        jsonText(doc),
        h("ol", { class: "chunks", "aria-label": "Chunks" }, chunks.map((c) =>
          h("li", {}, h("span", { class: "chunk-where" }, c.page ? `page ${c.page}` : ""), h("pre", { class: "chunk" }, c.text)))),
      );
    } catch (error) {
      fail(error);
    }
  }

  async function remove(doc) {
    if (!(await confirmAction(`Delete document ${doc.title || doc.id} and all its chunks?`))) return;
    try {
      await api("DELETE", `${base()}/${encodeURIComponent(doc.id)}`);
      say(`Deleted ${doc.title || doc.id}.`);
      opened.replaceChildren();
      await refresh();
    } catch (error) {
      fail(error);
    }
  }

  await refresh();
}
