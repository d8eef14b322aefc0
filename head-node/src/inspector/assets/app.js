// The agentfleet inspector: one page, routed by the URL's hash, fed by the head's JSON
// (/ui/api/...) and server-sent events. No framework and no build step: the head serves
// this file as it is. Server data is only ever put in the page as text (textContent),
// never as markup: task inputs and outputs are whatever clients sent.
"use strict";

(() => {
  // ---------------------------------------------------------------- small helpers

  const $ = (selector, root = document) => root.querySelector(selector);

  /** An element: `attrs` are attributes (`text` sets its text); children are nodes or text. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const TERMINAL = new Set(["completed", "failed", "canceled"]);
  const STATES = ["queued", "scheduled", "working", "input-required", "completed", "failed", "canceled"];

  function bytes(n) {
    if (!n) return "0 B";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
    return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function duration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
    if (ms < 1) return `${ms.toFixed(2)} ms`;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.round(ms / 60000)} min`;
  }

  const clock = (us) => (us ? new Date(us / 1000).toLocaleTimeString([], { hour12: false }) : "—");
  const since = (from, to) => (from && to ? duration((to - from) / 1000) : "—");
  const taskLink = (id, text) => el("a", { href: `#/tasks/${encodeURIComponent(id)}`, class: "task-link", text: text || id.slice(0, 8) });
  const badge = (state) => el("span", { class: `badge state-${state}`, text: state });

  /** A table inside a scrolling region (narrow screens scroll it sideways, not the page). */
  function table(id, label, headings) {
    const head = el("tr", {}, ...headings.map((h) => el("th", { scope: "col", text: h })));
    const body = el("tbody");
    const wrap = el("div", { class: "scroll", tabindex: 0, role: "region", "aria-label": label },
      el("table", { id }, el("caption", { class: "visually-hidden", text: label }), el("thead", {}, head), body));
    return { wrap, body };
  }

  function definitions(pairs) {
    const dl = el("dl", { class: "facts" });
    for (const [term, value] of pairs) dl.append(el("div", {}, el("dt", { text: term }), el("dd", {}, value)));
    return dl;
  }

  async function getJson(path) {
    const response = await fetch(path, { credentials: "same-origin" });
    if (response.status === 401) location.assign("/ui/login");
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  // ------------------------------------------------------------------ login page

  if (document.body.classList.contains("login-page")) {
    if (new URLSearchParams(location.search).has("failed")) $("#login-error").hidden = false;
    return;
  }

  // -------------------------------------------------------- the one live stream

  const main = $("#main");
  const liveStatus = $("#live");
  let source = null;

  function say(text) {
    liveStatus.textContent = text;
  }

  /** Follows `url`; `handlers` maps event names to functions of the parsed data. */
  function follow(url, handlers, onClosed) {
    stop();
    const es = new EventSource(url);
    source = es;
    es.onopen = () => say("live");
    es.onerror = (e) => {
      if (e.data) return; // the server's own `error` event, handled below
      if (es.readyState === EventSource.CLOSED) {
        say("disconnected");
        if (onClosed) onClosed();
      } else say("reconnecting…");
    };
    for (const [name, handle] of Object.entries(handlers)) {
      es.addEventListener(name, (e) => {
        if (source !== es || !e.data) return;
        handle(JSON.parse(e.data));
      });
    }
    return es;
  }

  function stop() {
    if (source) source.close();
    source = null;
  }

  // ----------------------------------------------------------------------- router

  function route() {
    stop();
    const hash = location.hash.replace(/^#\/?/, "") || "cluster";
    const [path, query] = hash.split("?");
    const [page, ...rest] = path.split("/");
    const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
    for (const link of document.querySelectorAll("nav a[data-nav]")) {
      if (link.dataset.nav === page) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    main.replaceChildren();
    say("connecting…");
    const params = new URLSearchParams(query || "");
    if (page === "agents") agentsPage();
    else if (page === "tasks" && arg) taskPage(arg);
    else if (page === "tasks") tasksPage(params);
    else if (page === "topics" && arg) topicPage(arg);
    else if (page === "topics") topicsPage();
    else clusterPage();
  }

  // ---------------------------------------------------------------- cluster page

  const history = []; // the last 120 cluster snapshots' figures, for the charts
  const HISTORY = 120;

  function chart(id, label) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("id", id);
    svg.setAttribute("viewBox", "0 0 240 60");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    const title = document.createElementNS(svg.namespaceURI, "title");
    const line = document.createElementNS(svg.namespaceURI, "polyline");
    svg.append(title, line);
    const value = el("p", { class: "chart-value" });
    const figure = el("figure", { class: "chart" }, el("figcaption", { text: label }), svg, value);
    return {
      figure,
      draw(points, unit) {
        const max = Math.max(1, ...points);
        const step = 240 / (HISTORY - 1);
        const offset = (HISTORY - points.length) * step;
        line.setAttribute("points", points.map((p, i) => `${(offset + i * step).toFixed(1)},${(58 - (p / max) * 56).toFixed(1)}`).join(" "));
        const now = points.length ? points[points.length - 1] : 0;
        const text = `${label}: ${now.toFixed(now < 10 ? 1 : 0)} ${unit} now, at most ${max.toFixed(max < 10 ? 1 : 0)} over the last ${points.length} s`;
        title.textContent = text;
        value.textContent = `${now.toFixed(now < 10 ? 1 : 0)} ${unit} (max ${max.toFixed(0)})`;
      },
    };
  }

  function clusterPage() {
    const totals = el("div", { id: "totals" });
    const throughput = chart("chart-throughput", "Tasks ended per second");
    const queue = chart("chart-queue", "Queued tasks");
    const workers = table("workers", "Workers", ["Worker", "Labels", "Slots used", "CPUs free", "Memory free", "Models", "Heartbeat"]);
    const mesh = el("ul", { id: "mesh" });
    main.append(el("h1", { text: "Cluster" }), totals, el("div", { class: "charts" }, throughput.figure, queue.figure),
      el("h2", { text: "Workers" }), workers.wrap, el("h2", { text: "Mesh" }), mesh);

    follow("/ui/api/cluster/live", {
      cluster(view) {
        const t = view.totals;
        history.push({ at: view.now_us, ended: t.completed + t.failed + t.canceled, queued: t.queued_tasks });
        if (history.length > HISTORY) history.shift();
        totals.replaceChildren(definitions([
          ["Workers", t.workers], ["Agents", t.agents], ["Queued", t.queued_tasks], ["Running", t.running_tasks],
          ["Submitted", t.submitted], ["Completed", t.completed], ["Failed", t.failed], ["Canceled", t.canceled],
          ["Retained", t.retained_tasks], ["Worker events", t.events], ["Calls relayed", t.calls_relayed],
        ]));
        const rates = [];
        for (let i = 1; i < history.length; i++) {
          const dt = (history[i].at - history[i - 1].at) / 1e6;
          rates.push(dt > 0 ? Math.max(0, history[i].ended - history[i - 1].ended) / dt : 0);
        }
        throughput.draw(rates, "tasks/s");
        queue.draw(history.map((h) => h.queued), "tasks");
        workers.body.replaceChildren(...view.workers.map(workerRow));
        if (!view.workers.length) workers.body.append(el("tr", {}, el("td", { colspan: 7, text: "No worker has joined." })));
        mesh.replaceChildren(...view.mesh.map((m) => el("li", {}, el("strong", { text: m.worker }), " sees ",
          m.sees.length ? m.sees.join(", ") : "no other worker")));
        if (!view.mesh.length) mesh.append(el("li", { text: "No worker is on the mesh (calls between agents go through the head)." }));
      },
    });
  }

  function workerRow(w) {
    const labels = Object.entries(w.labels).map(([k, v]) => el("span", { class: "chip", text: `${k}=${v}` }));
    const models = w.models.map((m) => {
      const lookups = m.prefix_hits + m.prefix_misses;
      const kv = m.kv_capacity_bytes ? el("meter", { min: 0, max: m.kv_capacity_bytes, value: m.kv_bytes, "aria-label": `KV cache of ${m.id}` }) : null;
      return el("div", { class: "model" }, el("strong", { text: m.id }), " ", kv,
        ` KV ${bytes(m.kv_bytes)} / ${bytes(m.kv_capacity_bytes)} · ${m.active_sequences} running, ${m.waiting_sequences} waiting · ` +
        `${m.tokens_per_s.toFixed(1)} tok/s · prefix hits ${lookups ? `${Math.round((100 * m.prefix_hits) / lookups)}%` : "—"}`);
    });
    const gpus = w.gpus.map((g) => el("div", { class: "muted", text: `GPU ${g.index}: ${g.name} (${bytes(g.memory_bytes)})` }));
    return el("tr", { "data-worker": w.id },
      el("th", { scope: "row" }, el("div", { text: w.id }), el("div", { class: "muted", text: `${w.hostname} · ${w.address}` })),
      el("td", {}, ...labels),
      el("td", { text: `${w.running_tasks} / ${w.slots}` }),
      el("td", { text: `${w.free.cpus.toFixed(1)} / ${w.resources.cpus.toFixed(1)}` }),
      el("td", { text: `${bytes(w.free.memory_bytes)} / ${bytes(w.resources.memory_bytes)}` }),
      el("td", {}, ...(models.length ? models : [el("span", { class: "muted", text: w.models_on_disk.length ? `on disk: ${w.models_on_disk.join(", ")}` : "none loaded" })]), ...gpus),
      el("td", { text: duration(w.heartbeat_ago_ms) + " ago" }));
  }

  // ----------------------------------------------------------------- agents page

  function agentsPage() {
    const agents = table("agents", "Agents", ["Agent", "Model", "Running", "Queued", "Completed / failed / canceled", "Latency p50 · p90 · p99", "Workers"]);
    main.append(el("h1", { text: "Agents" }), el("p", { class: "muted", text: "Counts of finished tasks and latencies are over the tasks the head still retains." }), agents.wrap);
    const open = new Set(); // specs the reader unfolded stay unfolded across updates
    follow("/ui/api/agents/live", {
      agents(view) {
        agents.body.replaceChildren(...view.agents.map((a) => {
          const details = el("details", { open: open.has(a.name) }, el("summary", { text: a.name }),
            a.description ? el("p", { class: "muted", text: a.description }) : null,
            el("pre", { class: "spec", text: JSON.stringify(a.spec, null, 2) }));
          details.addEventListener("toggle", () => (details.open ? open.add(a.name) : open.delete(a.name)));
          const l = a.latency_ms;
          return el("tr", { "data-agent": a.name },
            el("th", { scope: "row" }, details),
            el("td", { text: a.model }),
            el("td", {}, el("a", { href: `#/tasks?agent=${encodeURIComponent(a.name)}&state=working`, text: a.running })),
            el("td", {}, el("a", { href: `#/tasks?agent=${encodeURIComponent(a.name)}&state=queued`, text: a.queued })),
            el("td", { text: `${a.done.completed} / ${a.done.failed} / ${a.done.canceled}` }),
            el("td", { text: l ? `${duration(l.p50)} · ${duration(l.p90)} · ${duration(l.p99)} (${l.count})` : "—" }),
            el("td", { text: a.workers.join(", ") || "—" }));
        }));
        if (!view.agents.length) agents.body.append(el("tr", {}, el("td", { colspan: 7, text: "No agent is registered." })));
      },
    });
  }

  // ------------------------------------------------------------------ tasks page

  function tasksPage(params) {
    const agent = params.get("agent") || "";
    const state = params.get("state") || "";
    const agentSelect = el("select", { id: "filter-agent" }, el("option", { value: "", text: "all agents" }));
    if (agent) agentSelect.append(el("option", { value: agent, text: agent }));
    agentSelect.value = agent;
    const stateSelect = el("select", { id: "filter-state" }, el("option", { value: "", text: "any state" }),
      ...STATES.map((s) => el("option", { value: s, text: s })));
    stateSelect.value = state;
    const onFilter = () => {
      const q = new URLSearchParams();
      if (agentSelect.value) q.set("agent", agentSelect.value);
      if (stateSelect.value) q.set("state", stateSelect.value);
      location.hash = `#/tasks${q.toString() ? `?${q}` : ""}`;
    };
    agentSelect.addEventListener("change", onFilter);
    stateSelect.addEventListener("change", onFilter);
    const total = el("p", { id: "tasks-total", "aria-live": "polite" });
    const tasks = table("tasks", "Tasks, newest first", ["Task", "Agent", "State", "Worker", "Events", "Submitted", "Took", "Input", "Called by"]);
    main.append(el("h1", { text: "Tasks" }),
      el("div", { class: "filters" },
        el("label", { for: "filter-agent", text: "Agent" }), agentSelect,
        el("label", { for: "filter-state", text: "State" }), stateSelect),
      total, tasks.wrap);

    getJson("/ui/api/agents").then((view) => {
      for (const a of view.agents) if (a.name !== agent) agentSelect.append(el("option", { value: a.name, text: a.name }));
    }).catch((e) => say(e.message));

    const rows = new Map(); // task id -> its row, updated in place
    const q = new URLSearchParams({ limit: "100" });
    if (agent) q.set("agent", agent);
    if (state) q.set("state", state);
    follow(`/ui/api/tasks/live?${q}`, {
      tasks(view) {
        total.textContent = `${view.total} task${view.total === 1 ? "" : "s"}${view.total > view.tasks.length ? `, the newest ${view.tasks.length} shown` : ""}`;
        const seen = new Set();
        const ordered = view.tasks.map((t) => {
          seen.add(t.id);
          let row = rows.get(t.id);
          if (!row) {
            row = el("tr", { "data-task": t.id });
            rows.set(t.id, row);
          }
          row.replaceChildren(
            el("td", {}, taskLink(t.id)),
            el("td", { text: t.agent }),
            el("td", { class: "state" }, badge(t.state)),
            el("td", { text: t.worker || "—" }),
            el("td", { class: "num", text: t.events }),
            el("td", { text: clock(t.submitted_at_us) }),
            el("td", { text: t.finished_at_us ? since(t.submitted_at_us, t.finished_at_us) : "…" }),
            el("td", { class: "input", text: t.input }),
            el("td", {}, t.parent ? taskLink(t.parent) : "—"));
          return row;
        });
        for (const id of rows.keys()) if (!seen.has(id)) rows.delete(id);
        tasks.body.replaceChildren(...ordered);
        if (!ordered.length) tasks.body.append(el("tr", {}, el("td", { colspan: 9, text: "No task matches." })));
      },
    });
  }

  // ------------------------------------------------------------------- task page

  function taskPage(id) {
    const fields = {
      agent: el("span", { id: "task-agent" }),
      state: el("span", { id: "task-state", class: "badge" }),
      attempt: el("span"),
      worker: el("span"),
      parent: el("span"),
      context: el("span"),
    };
    const cancel = el("button", { id: "cancel", type: "button", text: "Cancel task", hidden: true });
    const alert = el("p", { id: "task-alert", role: "alert", class: "error" });
    const timings = el("ol", { id: "timings", class: "timings" });
    const input = el("pre", { class: "text" });
    const output = el("pre", { id: "task-output", class: "text", "aria-live": "polite" });
    const error = el("p", { class: "error" });
    const usage = el("p", { class: "muted" });
    const subtasks = el("ul", { id: "subtasks" });
    const events = el("ol", { id: "events", class: "events" });
    main.append(
      el("h1", {}, "Task ", el("code", { text: id })),
      definitions([["Agent", fields.agent], ["State", fields.state], ["Attempt", fields.attempt], ["Worker", fields.worker], ["Called by", fields.parent], ["Context", fields.context]]),
      el("div", { class: "actions" }, cancel), alert,
      el("h2", { text: "Timings" }), timings,
      el("details", {}, el("summary", { text: "Input" }), input),
      el("h2", { text: "Output" }), output, error, usage,
      el("h2", { text: "Sub-tasks" }), subtasks,
      el("h2", { text: "Events" }), events);

    let view = null;
    let lastSeq = 0;
    let lastWorker = "";
    let textRun = null; // the <li> of the current run of text events
    const calls = new Map(); // call id -> the span its sub-task link goes in
    let pending = ""; // streamed text not yet on the page (written once per frame)

    const flush = () => {
      if (pending) output.append(pending);
      pending = "";
    };
    const write = (text) => {
      if (!pending) requestAnimationFrame(flush);
      pending += text;
    };

    function linkCalls() {
      if (!view) return;
      for (const child of view.children) {
        const slot = calls.get(child.call_id);
        if (slot && !slot.firstChild) slot.append(" → ", el("a", { class: "subtask-link", "data-task": child.task_id, href: `#/tasks/${encodeURIComponent(child.task_id)}`, text: `sub-task ${child.task_id.slice(0, 8)} (${child.agent})` }));
      }
    }

    function show(v) {
      view = v;
      fields.agent.textContent = v.agent;
      fields.state.textContent = v.state;
      fields.state.className = `badge state-${v.state}`;
      fields.attempt.textContent = v.attempt;
      fields.worker.textContent = v.worker || "—";
      fields.parent.replaceChildren(v.parent ? el("a", { id: "task-parent", href: `#/tasks/${encodeURIComponent(v.parent.task_id)}`, text: `${v.parent.task_id.slice(0, 8)} (call ${v.parent.call_id})` }) : "—");
      fields.context.textContent = v.context_id || "—";
      cancel.hidden = TERMINAL.has(v.state);
      if (input.textContent !== v.input) input.textContent = v.input;
      error.textContent = v.error;
      usage.textContent = v.usage.prompt_tokens || v.usage.completion_tokens
        ? `${v.usage.prompt_tokens} prompt tokens (${v.usage.cached_tokens} cached), ${v.usage.completion_tokens} generated` : "";
      const t = v.timings;
      timings.replaceChildren(
        el("li", {}, "queued ", el("strong", { text: "0 ms" })),
        el("li", {}, "scheduled ", el("strong", { text: since(t.submitted_us, t.scheduled_us) })),
        el("li", {}, "first token ", el("strong", { text: since(t.submitted_us, t.first_token_us) })),
        el("li", {}, "done ", el("strong", { text: since(t.submitted_us, t.finished_us) })));
      subtasks.replaceChildren(...v.children.map((c) => el("li", {}, taskLink(c.task_id, c.task_id.slice(0, 8)), ` ${c.agent} `, badge(c.state))));
      if (!v.children.length) subtasks.append(el("li", { class: "muted", text: "none" }));
      linkCalls();
    }

    function item(e, ...content) {
      const at = view ? since(view.timings.submitted_us, e.at_us) : clock(e.at_us);
      return el("li", { "data-seq": e.seq, "data-kind": e.kind }, el("span", { class: "at", text: `+${at}` }), ...content);
    }

    function onEvent(e) {
      if (e.seq <= lastSeq) return; // already shown (the stream resumed)
      lastSeq = e.seq;
      if (e.kind === "text") {
        write(e.text);
        if (textRun) {
          textRun.count += 1;
          textRun.chars += e.text.length;
          textRun.label.textContent = `text: ${textRun.count} deltas, ${textRun.chars} characters`;
        } else {
          const label = el("span", { text: `text: 1 delta, ${e.text.length} characters` });
          textRun = { count: 1, chars: e.text.length, label };
          events.append(item(e, label));
        }
        return;
      }
      textRun = null;
      let content;
      switch (e.kind) {
        case "submitted": content = [`submitted to ${e.agent}`]; break;
        case "scheduled": lastWorker = e.worker; content = [`scheduled on ${e.worker}`]; break;
        case "working": content = ["working"]; break;
        case "tool_call": {
          const slot = el("span");
          calls.set(e.call_id, slot);
          content = ["calls ", el("strong", { text: e.name }), " ", el("code", { text: e.arguments }), slot];
          break;
        }
        case "tool_result":
          content = [e.is_error ? "tool error: " : "tool result: ", el("code", { class: e.is_error ? "error" : "", text: e.output })];
          break;
        case "completed": content = [`completed: ${e.usage.completion_tokens} tokens generated`]; break;
        case "failed": content = [el("span", { class: "error", text: `failed${e.worker ? ` on ${e.worker}` : ""}: ${e.error}` })]; break;
        case "canceled": content = [`canceled: ${e.reason}`]; break;
        case "input_required": content = [`input required: ${e.prompt}`]; break;
        case "retrying":
          pending = "";
          output.textContent = ""; // a new attempt starts over
          content = [el("span", { class: "warn", text: `retrying after attempt ${e.failed_attempt}${lastWorker ? ` (worker ${lastWorker} lost)` : ""}: ${e.reason}` })];
          break;
        case "embeddings": content = [`${e.count} embeddings of ${e.dims} dimensions`]; break;
        default: content = [e.kind];
      }
      events.append(item(e, ...content));
      linkCalls();
    }

    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      alert.textContent = "";
      try {
        const response = await fetch(`/ui/api/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST", headers: { "X-Fleet-UI": "1" }, credentials: "same-origin" });
        const body = await response.json().catch(() => ({}));
        if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
        // The stream may already have brought the task further (a running task ends when
        // its worker says so): keep whichever is newer.
        if (!view || body.seq >= view.seq) show(body);
      } catch (e) {
        alert.textContent = `Could not cancel: ${e.message}`;
      } finally {
        cancel.disabled = false;
      }
    });

    const es = follow(`/ui/api/tasks/${encodeURIComponent(id)}/live`, {
      task: show,
      event: onEvent,
      end() {
        flush();
        stop();
        say("ended");
      },
      error(data) {
        say(data.error);
      },
    }, () => {
      // The stream was refused (not a dropped connection): say why.
      getJson(`/ui/api/tasks/${encodeURIComponent(id)}`).catch((e) => { alert.textContent = e.message; });
    });
    void es;
  }

  // ----------------------------------------------------------------- topics page

  function topicsPage() {
    const list = el("ul", { id: "topics" });
    const name = el("input", { id: "topic-name", type: "text", required: true, autocomplete: "off" });
    const form = el("form", { class: "filters" }, el("label", { for: "topic-name", text: "Follow a topic" }), name, el("button", { type: "submit", text: "Follow" }));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (name.value.trim()) location.hash = `#/topics/${encodeURIComponent(name.value.trim())}`;
    });
    main.append(el("h1", { text: "Topics" }), form, el("h2", { text: "Topics agents use" }), list);
    say("");
    getJson("/ui/api/topics").then((view) => {
      list.replaceChildren(...view.topics.map((t) => el("li", {}, el("a", { class: "topic-link", href: `#/topics/${encodeURIComponent(t)}`, text: t }))));
      if (!view.topics.length) list.append(el("li", { class: "muted", text: "No agent names a topic." }));
    }).catch((e) => say(e.message));
  }

  function topicPage(topic) {
    const messages = el("ol", { id: "topic-messages", class: "events", reversed: true });
    const note = el("p", { class: "muted", role: "status" });
    main.append(el("h1", {}, "Topic ", el("code", { text: topic })), note, messages);
    follow(`/ui/api/topics/${encodeURIComponent(topic)}/live`, {
      message(m) {
        messages.prepend(el("li", {}, el("span", { class: "at", text: clock(m.at_us) }), el("strong", { text: m.publisher }),
          ` #${m.seq}: `, el("span", { class: "body", text: m.body })));
        while (messages.childElementCount > 500) messages.lastElementChild.remove();
      },
      error(data) {
        note.textContent = data.error;
      },
    });
  }

  window.addEventListener("hashchange", route);
  route();
})();
