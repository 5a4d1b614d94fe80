// Chat: streamed answers, optionally grounded in a collection (its sources
// shown as numbered citations), the conversation's history, memory on/off
// and feedback on each answer.

import { api, ApiError, collectionNames, confirmAction, fail, field, h, hasRoute, say, select, token } from "../lib.js";
import { readEvents } from "../sse.js";

export async function render(ctx, root) {
  const withConversations = await hasRoute("GET", "/api/v1/conversations");
  const withMemory = await hasRoute("GET", "/api/v1/memory");
  const names = ctx.can("SearchVectors") ? await collectionNames() : [];
  const grounding = select([{ value: "", label: "None (no retrieval)" }, ...names], { name: "context-collection" });
  const last = sessionStorage.getItem("lodestar.collection");
  if (last && names.includes(last)) grounding.value = last;
  const memory = h("input", { type: "checkbox", name: "memory", id: "memory-toggle", disabled: !withMemory });
  const memoryLabel = h("label", { for: "memory-toggle" }, withMemory ? "Memory" : "Memory (not available here)");
  const log = h("div", { id: "chat-log", class: "chat-log", role: "log", "aria-live": "polite" });
  const input = h("textarea", { name: "message", rows: 3, cols: 70, required: true });
  const maxTokens = h("input", { name: "max-tokens", type: "number", min: 1, max: 4096, value: 256 });
  const send = h("button", { type: "submit" }, "Send");
  const history = h("div", { id: "chat-history" });
  const remembered = h("div", { id: "chat-memory" });
  let messages = [];
  let sessionId = crypto.randomUUID();

  const form = h("form", { id: "chat-form", class: "card" },
    h("div", { class: "row" }, field("Answer from collection", grounding), h("div", { class: "field check" }, memory, memoryLabel),
      field("Max tokens", maxTokens), h("button", { type: "button", onclick: newChat }, "New chat")),
    field("Message", input),
    send);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    send.disabled = true;
    try {
      await ask(text);
    } catch (error) {
      fail(error);
    } finally {
      send.disabled = false;
      input.focus();
    }
  });
  root.append(h("div", { class: "chat" }, h("div", {}, log, form), h("div", { class: "card" }, history, remembered)));

  function newChat() {
    messages = [];
    sessionId = crypto.randomUUID();
    log.replaceChildren();
    say("New chat.");
  }

  async function ask(text) {
    messages.push({ role: "user", content: text });
    log.append(h("div", { class: "turn user" }, h("strong", {}, "You: "), h("span", {}, text)));
    const answer = h("span", { class: "answer-text" });
    const turn = h("div", { class: "turn assistant" }, h("strong", {}, "Lodestar: "), answer);
    log.append(turn);
    // With server-side conversations the gateway keeps the earlier turns:
    // send only the new one.
    const sent = withConversations ? [messages[messages.length - 1]] : messages;
    const body = { messages: sent, stream: true, max_tokens: Number(maxTokens.value) || 256, session_id: sessionId };
    if (ctx.can("InsertVectors")) body.store_embedding = true;
    if (grounding.value) body.context = { collection: grounding.value, limit: 3 };
    if (withMemory && memory.checked) body.memory = true;
    if (withConversations) body.conversation_id = sessionId;
    const response = await fetch("/api/v1/generate", {
      method: "POST",
      headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      messages.pop();
      throw new ApiError(response.status, await response.json().catch(() => null));
    }
    let full = "";
    for await (const { event, data } of readEvents(response)) {
      if (event === "sources") turn.append(citations(data.sources));
      else if (event === "token") {
        full += data.delta;
        answer.textContent = full;
      } else if (event === "done") {
        const turnId = data.conversation && data.conversation.turn_id;
        const target = data.stored || (turnId ? { id: turnId } : null);
        if (target) turn.append(feedback(target));
        if (data.context && data.context.message) turn.append(h("p", { class: "notice" }, data.context.message));
      } else if (event === "error") {
        throw new ApiError(data.error ? 500 : 500, data);
      }
    }
    messages.push({ role: "assistant", content: full });
    await refreshHistory();
    await refreshMemory();
  }

  async function refreshMemory() {
    if (!withMemory) return;
    try {
      const data = await api("GET", "/api/v1/memory?page_size=50");
      remembered.replaceChildren(
        h("h3", {}, "Memory"),
        data.items.length
          ? h("ul", { "aria-label": "Remembered" }, data.items.map((item) => h("li", {},
              h("span", {}, item.prompt), " ",
              h("button", { type: "button", class: "danger", onclick: async () => {
                await api("DELETE", `/api/v1/memory/${encodeURIComponent(item.id)}`);
                say("Forgotten.");
                await refreshMemory();
              } }, `Forget ${item.prompt.slice(0, 40)}`))))
          : h("p", {}, "Nothing remembered."),
        data.items.length
          ? h("button", { type: "button", class: "danger", onclick: async () => {
              if (!(await confirmAction("Forget everything remembered about you?", "Forget everything"))) return;
              await api("DELETE", "/api/v1/memory");
              say("Everything forgotten.");
              await refreshMemory();
            } }, "Forget everything")
          : "",
      );
    } catch (error) {
      fail(error);
    }
  }

  function citations(sources) {
    if (!sources || !sources.length) return h("p", { class: "notice" }, "No sources.");
    return h("ol", { class: "sources", "aria-label": "Sources" }, sources.map((s) => {
      // Document sources carry document_id, title, position and page.
      const payload = s.payload || {};
      const title = s.title || payload.title || s.document_id || `point ${s.id}`;
      const where = [s.page ? `page ${s.page}` : "", s.position !== undefined ? `chunk ${s.position}` : ""].filter(Boolean).join(", ");
      return h("li", { class: "source", value: s.citation },
        h("strong", {}, `[${s.citation}] ${title}`),
        h("span", {}, ` score ${Number(s.score).toFixed(3)}${where ? ` · ${where}` : ""}`),
        h("blockquote", {}, s.excerpt || ""));
    }));
  }

  function feedback(stored) {
    const box = h("div", { class: "row feedback" }, h("span", {}, "Was this helpful?"));
    const rate = async (score, label) => {
      try {
        const body = { interaction_id: stored.id, score };
        if (stored.collection) body.collection = stored.collection;
        await api("POST", "/api/v1/feedback", body);
        box.replaceChildren(h("span", { class: "thanks" }, `Feedback recorded: ${label}.`));
      } catch (error) {
        fail(error);
      }
    };
    box.append(
      h("button", { type: "button", onclick: () => rate(5, "helpful") }, "Helpful"),
      h("button", { type: "button", onclick: () => rate(1, "not helpful") }, "Not helpful"),
    );
    return box;
  }

  async function refreshHistory() {
    if (!withConversations) {
      history.replaceChildren(h("h3", {}, "History"),
        h("p", { class: "notice" }, "Server-side conversations are not available on this gateway (its API answered 404); this chat's turns are kept in this page only."),
        h("p", {}, `Turns in this chat: ${messages.length / 2}.`));
      return;
    }
    try {
      const data = await api("GET", "/api/v1/conversations");
      const items = data.conversations || data.items || [];
      history.replaceChildren(h("h3", {}, "Conversations"), h("ul", {}, items.map((c) => {
        const id = c.id || c.conversation_id;
        return h("li", {}, h("span", {}, c.title || id), " ",
          h("button", { type: "button", onclick: () => openConversation(id) }, `Open ${c.title || id}`), " ",
          h("button", { type: "button", class: "danger", onclick: async () => {
            await api("DELETE", `/api/v1/conversations/${encodeURIComponent(id)}`);
            await refreshHistory();
          } }, `Delete ${c.title || id}`));
      })));
    } catch (error) {
      fail(error);
    }
  }

  async function openConversation(id) {
    try {
      const data = await api("GET", `/api/v1/conversations/${encodeURIComponent(id)}`);
      const turns = data.turns || data.messages || [];
      sessionId = id;
      messages = [];
      log.replaceChildren();
      for (const t of turns) {
        const role = t.role || (t.answer ? "assistant" : "user");
        if (t.prompt !== undefined) {
          messages.push({ role: "user", content: t.prompt }, { role: "assistant", content: t.answer || "" });
          log.append(h("div", { class: "turn user" }, h("strong", {}, "You: "), h("span", {}, t.prompt)));
          log.append(h("div", { class: "turn assistant" }, h("strong", {}, "Lodestar: "), h("span", {}, t.answer || "")));
        } else {
          messages.push({ role, content: t.content || "" });
          log.append(h("div", { class: `turn ${role}` }, h("strong", {}, role === "user" ? "You: " : "Lodestar: "), h("span", {}, t.content || "")));
        }
      }
    } catch (error) {
      fail(error);
    }
  }

  await refreshHistory();
  await refreshMemory();
}
