// The agentfleet inspector: one page, routed by the URL's hash, fed by the head's JSON
// (/ui/api/...) and server-sent events. No framework and no build step: the head serves
// this file as it is, under a CSP that forbids inline script and style. Server data only
// ever reaches the page as text (textContent / createTextNode), never as markup: task
// inputs and outputs are whatever clients sent.
"use strict";

(() => {
  // ------------------------------------------------------------------ small helpers

  const $ = (selector, root = document) => root.querySelector(selector);

  /** An element: `attrs` are attributes (`text` sets its text, a function `onEVENT` listens);
   * children are nodes or text. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (typeof value === "function" && name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false || child === "") continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svgEl(tag, attrs = {}, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    node.append(...children);
    return node;
  }

  /** `node` with a tooltip (an SVG <title>, which screen readers read too). */
  function titled(node, text) {
    const title = svgEl("title");
    title.textContent = text;
    node.append(title);
    return node;
  }

  /** SVG text, set as text (never markup). */
  function svgText(attrs, text) {
    const node = svgEl("text", attrs);
    node.textContent = text;
    return node;
  }

  /** A time on an axis: "12:03:04", or "+1.2 s" from `origin` when given. */
  const tick = (us, origin) => (origin ? `+${duration((us - origin) / 1000)}` : clock(us));

  /** Axis ticks for `span` µs: about `n` round steps. */
  function ticks(from, to, n) {
    const steps = [1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 15e6, 3e7, 6e7, 12e7, 3e8, 6e8, 9e8, 18e8, 36e8, 72e8, 216e8, 864e8];
    const step = steps.find((s) => (to - from) / s <= n) || steps[steps.length - 1];
    const out = [];
    for (let t = Math.ceil(from / step) * step; t <= to; t += step) out.push(t);
    return out;
  }

  // The head's clock against this page's: running bars end at the head's "now".
  let clockSkewUs = 0;
  const headNow = () => Date.now() * 1000 + clockSkewUs;
  const heard = (nowUs) => { if (nowUs) clockSkewUs = nowUs - Date.now() * 1000; };

  const TERMINAL = new Set(["completed", "failed", "canceled"]);
  const STATES = ["queued", "scheduled", "working", "input-required", "completed", "failed", "canceled"];

  const pad = (n) => String(n).padStart(2, "0");
  /** Local wall-clock time, HH:MM:SS, of a timestamp in microseconds ("—" for 0). */
  function clock(us) {
    if (!us) return "—";
    const d = new Date(us / 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function duration(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
    if (ms < 10) return `${ms.toFixed(1)} ms`;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    const s = Math.round(ms / 1000);
    if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${pad(Math.floor(s / 60) % 60)} min`;
  }

  /** The time from `from` to `to` (microseconds), or "—" while either is not known. */
  const since = (from, to) => (from && to ? duration(Math.max(0, to - from) / 1000) : "—");

  function bytes(n) {
    if (!n) return "0 B";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
    const v = n / 1024 ** i;
    return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
  }

  /** "used / total" in bytes, the unit said once when both share it: "3.0 / 16 GiB". */
  function bytePair(a, b) {
    const [x, y] = [bytes(a), bytes(b)];
    const unit = (v) => v.split(" ")[1];
    return unit(x) === unit(y) && a ? `${x.split(" ")[0]} / ${y}` : `${x} / ${y}`;
  }

  const count = (n) => Number(n || 0).toLocaleString("en-US");
  const plural = (n, word) => `${count(n)} ${word}${n === 1 ? "" : "s"}`;
  const percent = (part, whole) => (whole ? `${Math.round((100 * part) / whole)}%` : "—");
  const short = (id) => String(id).slice(0, 8);
  const clip = (s, n) => (s.length > n ? `${s.slice(0, n)}…` : s);
  const taskHref = (id) => `#/tasks/${encodeURIComponent(id)}`;
  const badge = (state) => el("span", { class: `badge state-${state}`, text: state });

  /** JSON text pretty-printed when it parses, else as it is. */
  function pretty(text) {
    try {
      const value = JSON.parse(text);
      return typeof value === "object" && value !== null ? JSON.stringify(value, null, 2) : text;
    } catch {
      return text;
    }
  }

  async function request(path, options = {}) {
    const response = await fetch(path, { credentials: "same-origin", ...options });
    if (response.status === 401) {
      location.assign("/ui/login");
      throw new Error("not logged in");
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  // --------------------------------------------------------------------- login page

  if (document.body.classList.contains("login-page")) {
    if (new URLSearchParams(location.search).has("failed")) $("#login-error").hidden = false;
    return;
  }

  const view = $("#view");
  const liveStatus = $("#live");
  const notice = $("#notice");

  function status(text, state) {
    liveStatus.textContent = text;
    liveStatus.dataset.state = state;
  }

  /** A message above the page (stream errors and the like), with an optional action. */
  function note(text, action) {
    notice.replaceChildren();
    notice.hidden = !text;
    if (!text) return;
    notice.append(el("span", { text: `${clock(Date.now() * 1000)} — ${text}` }));
    if (action) {
      const button = el("button", { type: "button", text: action.label });
      button.addEventListener("click", action.run);
      notice.append(" ", button);
    }
  }

  // ---------------------------------------------------------- the one live stream

  let source = null;

  function stop() {
    if (source) source.close();
    source = null;
  }

  /**
   * Follows the server-sent events at `url` (closing any other stream first: one at a
   * time). `handlers` maps event names to functions of the parsed data; a server `error`
   * event goes to `handlers.error` (or the notice), after which the server closes and
   * EventSource reconnects by itself, sending Last-Event-ID. A stream the server refuses
   * (a status, not a drop) is closed for good: `probe` then says why.
   */
  function follow(url, handlers, probe) {
    stop();
    const es = new EventSource(url);
    source = es;
    status("connecting…", "wait");
    es.addEventListener("open", () => {
      if (source !== es) return;
      status("live", "ok");
      if (handlers.open) handlers.open();
    });
    es.addEventListener("error", (e) => {
      if (source !== es) return;
      if (typeof e.data === "string") { // the server's own `error` event
        let message = e.data;
        try { message = JSON.parse(e.data).error || message; } catch { /* as sent */ }
        (handlers.error || note)(message);
      } else if (es.readyState === EventSource.CLOSED) {
        status("disconnected", "bad");
        request(probe || url.replace(/\/live\b/, "")).then(
          () => note("The live stream was refused.", { label: "Try again", run: route.again }),
          (err) => note(err.message, { label: "Try again", run: route.again }));
      } else status("reconnecting…", "wait");
    });
    for (const [name, handle] of Object.entries(handlers)) {
      if (name === "error" || name === "open") continue;
      es.addEventListener(name, (e) => {
        if (source !== es) return;
        let data;
        try { data = JSON.parse(e.data); } catch { return; }
        handle(data);
      });
    }
    return es;
  }

  // ------------------------------------------------------------ building blocks

  /**
   * A table whose rows follow a list of items by key (`data-<attr>` on each row): rows are
   * inserted, moved and removed, and a cell is rebuilt only when the data it shows changed,
   * so that a snapshot every second neither flickers nor loses focus, selection or an open
   * <details>. A column is {title, cls, head (a row header), show(item) -> text} or
   * {title, cls, head, sig(item) -> the data it shows, render(item) -> nodes}.
   */
  function liveTable(id, label, attr, columns, emptyText) {
    const body = el("tbody");
    const wrap = el("div", { class: "scroll", tabindex: 0, role: "region", "aria-label": label },
      el("table", { id },
        el("caption", { class: "visually-hidden", text: label }),
        el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", class: c.cls, text: c.title })))),
        body));
    const rows = new Map(); // key -> {tr, sigs}
    const empty = el("tr", { class: "empty" }, el("td", { colspan: columns.length, text: emptyText }));
    body.append(empty);
    empty.firstChild.textContent = "Loading…";

    function sync(items, key) {
      empty.remove();
      const seen = new Set();
      let cursor = body.firstChild;
      for (const item of items) {
        const k = key(item);
        seen.add(k);
        let row = rows.get(k);
        if (!row) {
          const cells = columns.map((c) => el(c.head ? "th" : "td", { scope: c.head ? "row" : null, class: c.cls }));
          row = { tr: el("tr", { [`data-${attr}`]: k }, cells), sigs: [] };
          rows.set(k, row);
        }
        columns.forEach((c, i) => {
          const cell = row.tr.children[i];
          if (c.show) {
            const text = String(c.show(item));
            if (cell.textContent !== text) cell.textContent = text;
            return;
          }
          const sig = JSON.stringify(c.sig(item));
          if (row.sigs[i] !== sig) {
            row.sigs[i] = sig;
            cell.replaceChildren(...c.render(item).flat(Infinity).filter((n) => n !== null && n !== undefined));
          }
        });
        if (row.tr === cursor) cursor = cursor.nextSibling;
        else body.insertBefore(row.tr, cursor);
      }
      for (const [k, row] of rows) {
        if (!seen.has(k)) {
          row.tr.remove();
          rows.delete(k);
        }
      }
      if (!items.length) {
        empty.firstChild.textContent = emptyText;
        body.append(empty);
      }
    }

    function clear(text = "Loading…") {
      for (const row of rows.values()) row.tr.remove();
      rows.clear();
      empty.firstChild.textContent = text;
      body.append(empty);
    }
    return { wrap, sync, clear };
  }

  /** Rebuilds `node`'s children only when `sig` (the data they show) changed: a link the
   * reader focused survives updates that do not touch it. */
  const sigs = new WeakMap();
  function rebuild(node, sig, build) {
    const key = JSON.stringify(sig);
    if (sigs.get(node) === key) return;
    sigs.set(node, key);
    node.replaceChildren(...[build()].flat(Infinity).filter((n) => n !== null && n !== undefined));
  }

  /** A <dl> of figures updated in place: facts(id, [[key, label], ...]).set(key, value). */
  function facts(id, pairs) {
    const dl = el("dl", { id, class: "facts" });
    const slots = {};
    for (const [key, label] of pairs) {
      slots[key] = el("dd", { text: "—" });
      dl.append(el("div", {}, el("dt", { text: label }), slots[key]));
    }
    return {
      dl,
      set(key, value) {
        const slot = slots[key];
        if (value instanceof Node) slot.replaceChildren(value);
        else if (slot.textContent !== String(value)) slot.textContent = String(value);
      },
    };
  }

  /** A small line chart of the last `HISTORY` values, with its value in words. */
  const HISTORY = 120;
  function chart(id, caption, unit, decimals) {
    const W = 240;
    const H = 60;
    const svg = svgEl("svg", { id, viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", focusable: "false" });
    const title = svgEl("title");
    const area = svgEl("polygon", { class: "area" });
    const line = svgEl("polyline", { class: "line" });
    svg.append(title, svgEl("line", { class: "base", x1: 0, y1: H - 1, x2: W, y2: H - 1 }), area, line);
    const value = el("p", { class: "chart-value" });
    const figure = el("figure", { class: "chart" }, el("figcaption", { text: caption }), svg, value);
    const fmt = (v) => v.toFixed(decimals);
    return {
      figure,
      draw(points) {
        const max = Math.max(1, ...points);
        const step = W / (HISTORY - 1);
        const x0 = (HISTORY - points.length) * step; // newest on the right edge
        const xy = points.map((p, i) => `${(x0 + i * step).toFixed(1)},${(H - 2 - (p / max) * (H - 6)).toFixed(1)}`);
        line.setAttribute("points", xy.join(" "));
        area.setAttribute("points", xy.length ? `${x0.toFixed(1)},${H - 1} ${xy.join(" ")} ${W},${H - 1}` : "");
        const now = points.length ? points[points.length - 1] : 0;
        const peak = points.length ? Math.max(...points) : 0;
        const words = `${caption}: ${fmt(now)} ${unit} now; at most ${fmt(peak)} over the last ${plural(points.length, "second")}.`;
        title.textContent = words;
        svg.setAttribute("aria-label", words);
        value.textContent = `${fmt(now)} ${unit}`;
        value.append(el("span", { class: "muted", text: ` · max ${fmt(peak)}` }));
      },
    };
  }

  // --------------------------------------------------------------------- cluster page

  // The last cluster snapshots' figures, kept across visits (bounded): the charts. (Not
  // `history`, which would hide window.history.)
  const clusterPoints = [];

  /** Sets the page's query in the URL without a new history entry (typing in a search box)
   * and follows it. */
  function replaceQuery(page, q) {
    window.history.replaceState(null, "", `#/${page}${q.toString() ? `?${q}` : ""}`);
    route();
  }

  /** Calls `run` once typing in `input` has paused. */
  function onTyped(input, run) {
    let timer = null;
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(run, 300);
    });
  }

  const GROUPS = { host: "Host", label: "Label", model: "Model" };
  const SORTS = { name: "Name", busiest: "Busiest", silent: "Longest silent" };

  function clusterPage(_, params) {
    const totals = facts("totals", [
      ["workers", "Workers"], ["agents", "Agents"], ["queued", "Queued"], ["running", "Running"],
      ["submitted", "Submitted"], ["completed", "Completed"], ["failed", "Failed"], ["canceled", "Canceled"],
      ["retained", "Retained tasks"], ["events", "Worker events"], ["relayed", "Calls relayed"],
      ["located", "Agents located"], ["head", "Head"],
    ]);
    const throughput = chart("chart-throughput", "Throughput (tasks ended per second)", "tasks/s", 1);
    const queue = chart("chart-queue", "Queue depth (queued tasks)", "queued", 0);

    // The workers: searched, grouped, sorted and paged on the head (a thousand rows would
    // be a wall, and a megabyte a second).
    const search = el("input", { id: "worker-search", type: "search", name: "q", autocomplete: "off", spellcheck: "false",
      placeholder: "host:NAME  key=value  model:ID  or any part", "aria-describedby": "worker-search-help" });
    const groupSelect = el("select", { id: "worker-group", name: "group" }, Object.entries(GROUPS).map(([v, t]) => el("option", { value: v, text: t })));
    const sortSelect = el("select", { id: "worker-sort", name: "sort" }, Object.entries(SORTS).map(([v, t]) => el("option", { value: v, text: t })));
    const form = el("form", { class: "filters", role: "search", "aria-label": "Find workers" },
      el("span", { class: "field" }, el("label", { for: "worker-search", text: "Search" }), search),
      el("span", { class: "field" }, el("label", { for: "worker-group", text: "Group by" }), groupSelect),
      el("span", { class: "field" }, el("label", { for: "worker-sort", text: "Sort by" }), sortSelect));
    const help = el("p", { id: "worker-search-help", class: "muted", text: "Every word must match: key=value a label, host:NAME a host, model:ID a model loaded or on disk, anything else a part of a worker's id, host, address, labels or models." });
    let query = new URLSearchParams();
    const chosen = () => {
      const q = new URLSearchParams();
      if (search.value.trim()) q.set("q", search.value.trim());
      if (groupSelect.value !== "host") q.set("group", groupSelect.value);
      if (sortSelect.value !== "name") q.set("sort", sortSelect.value);
      return q;
    };
    form.addEventListener("submit", (e) => { e.preventDefault(); replaceQuery("cluster", chosen()); });
    form.addEventListener("change", (e) => { if (e.target !== search) location.hash = `#/cluster?${chosen()}`; });
    onTyped(search, () => replaceQuery("cluster", chosen()));
    const lookFor = (word) => {
      search.value = word;
      location.hash = `#/cluster?${chosen()}`;
    };

    const groupName = (g) => g.key || { host: "(no host name)", label: "(no label)", model: "(no model loaded)" }[groupSelect.value];
    const groups = liveTable("worker-groups", "Workers by group", "group", [
      { title: "Group", head: true, sig: (g) => [g.key, g.search, groupSelect.value], render: (g) => [g.search
        ? el("button", { type: "button", class: "link", title: `List the workers of ${g.key} (search ${g.search})`, text: g.key, onclick: () => lookFor(g.search) })
        : el("span", { class: "muted", text: groupName(g) })] },
      { title: "Workers", cls: "num", sig: (g) => [g.workers, g.silent, g.draining], render: (g) => [
        el("div", { text: count(g.workers) }),
        g.silent ? el("div", { class: "warn", text: `${count(g.silent)} silent` }) : null,
        g.draining ? el("div", { class: "muted", text: `${count(g.draining)} draining` }) : null] },
      { title: "Slots used", cls: "num", show: (g) => `${count(g.running)} / ${count(g.slots)}` },
      { title: "CPUs free", cls: "num", show: (g) => `${+g.free_cpus.toFixed(1)} / ${+g.cpus.toFixed(1)}` },
      { title: "Memory free", cls: "num", show: (g) => bytePair(g.free_memory_bytes, g.memory_bytes) },
      { title: "GPUs", cls: "num", show: (g) => count(g.gpus) },
      { title: "Tokens/s", cls: "num", show: (g) => g.tokens_per_s.toFixed(1) },
      { title: "KV cache", cls: "num", show: (g) => (g.kv_capacity_bytes ? bytePair(g.kv_bytes, g.kv_capacity_bytes) : "—") },
      { title: "On the mesh", cls: "num", show: (g) => count(g.on_mesh) },
    ], "No worker matches.");
    const groupsNote = el("p", { id: "worker-groups-note", class: "muted" });

    const workers = liveTable("workers", "Workers", "worker", [
      { title: "Worker", head: true, sig: (w) => [w.id, w.hostname, w.address, w.version, w.gpus, w.draining, w.mesh && w.mesh.peer_id], render: (w) => [
        el("div", { text: w.id }, w.draining ? el("span", { class: "chip", text: "draining" }) : null),
        // A long host name may break after its dots, not in the middle of a word.
        el("div", { class: "muted" }, w.hostname.split(".").map((part, i) => [i ? "." : "", i ? el("wbr") : "", part])),
        el("div", { class: "muted", text: `${w.address} · v${w.version}` }),
        w.mesh ? el("div", { class: "muted", title: w.mesh.peer_id, text: `mesh ${clip(w.mesh.peer_id, 12)}` }) : null,
        w.gpus.map((g) => el("div", { class: "muted", text: `GPU ${g.index}: ${g.name} · ${bytes(g.memory_bytes)}` }))] },
      { title: "Labels", sig: (w) => w.labels,
        render: (w) => Object.entries(w.labels).map(([k, v]) => el("button", { type: "button", class: "chip", title: `List the workers labelled ${k}=${v}`, text: `${k}=${v}`, onclick: () => lookFor(`${k}=${v}`) })) },
      { title: "Slots used", cls: "num", sig: (w) => [w.id, w.running_tasks, w.slots, w.tasks_assigned],
        render: (w) => [el("div", { text: `${w.running_tasks} / ${w.slots}` }),
          el("a", { class: "muted", href: `#/tasks?worker=${encodeURIComponent(w.id)}`, title: `The tasks of ${w.id}`, text: `${count(w.tasks_assigned)} assigned` })] },
      { title: "CPUs free", cls: "num", show: (w) => `${+w.free.cpus.toFixed(2)} / ${+w.resources.cpus.toFixed(2)}` },
      { title: "Memory free", cls: "num", show: (w) => bytePair(w.free.memory_bytes, w.resources.memory_bytes) },
      { title: "Models (KV cache)", cls: "models", sig: (w) => [w.models.map((m) => [m.id, m.kv_bytes, m.kv_capacity_bytes]), w.models_on_disk],
        render: modelsCell },
      { title: "Sequences run / wait", cls: "num", sig: (w) => w.models.map((m) => [m.active_sequences, m.waiting_sequences]),
        render: (w) => perModel(w, (m) => `${m.active_sequences} / ${m.waiting_sequences}`) },
      { title: "Tokens/s", cls: "num", sig: (w) => w.models.map((m) => m.tokens_per_s),
        render: (w) => perModel(w, (m) => m.tokens_per_s.toFixed(1)) },
      { title: "Prefix-cache hits", cls: "num", sig: (w) => w.models.map((m) => [m.prefix_hits, m.prefix_misses]),
        render: (w) => perModel(w, (m) => percent(m.prefix_hits, m.prefix_hits + m.prefix_misses)) },
      { title: "Heartbeat", cls: "num", sig: (w) => Math.round(w.heartbeat_ago_ms / 100),
        render: (w) => [el("span", { class: w.heartbeat_ago_ms > 5000 ? "warn" : null, text: `${duration(w.heartbeat_ago_ms)} ago` })] },
    ], "No worker matches.");
    const previous = el("button", { type: "button", id: "workers-previous", text: "← Previous", disabled: true });
    const next = el("button", { type: "button", id: "workers-next", text: "Next →", disabled: true });
    const shown = el("span", { id: "workers-shown", role: "status", "aria-live": "polite" });
    const pager = el("nav", { class: "pager", "aria-label": "Pages of workers" }, previous, shown, next);
    let page = { offset: 0, limit: 100 };
    const turn = (offset) => {
      const q = new URLSearchParams(query);
      if (offset > 0) q.set("offset", offset); else q.delete("offset");
      location.hash = `#/cluster?${q}`;
    };
    previous.addEventListener("click", () => turn(Math.max(0, page.offset - page.limit)));
    next.addEventListener("click", () => turn(page.offset + page.limit));
    const mesh = el("p", { id: "mesh" });

    view.append(el("h1", { tabindex: -1, text: "Cluster" }), totals.dl,
      el("section", { class: "charts", "aria-label": "Charts" }, throughput.figure, queue.figure),
      el("h2", { text: "Workers" }), form, help,
      el("h3", { id: "worker-groups-title", text: "By host" }), groups.wrap, groupsNote,
      el("h3", { text: "Each worker" }), pager, workers.wrap,
      el("h2", { text: "Mesh" }), mesh);

    // A gap (the page was elsewhere) would make the charts lie about the time in between.
    if (clusterPoints.length && Date.now() - clusterPoints[clusterPoints.length - 1].seen > 10e3) clusterPoints.length = 0;

    function show(c) {
      const t = c.totals;
      clusterPoints.push({ at: c.now_us, seen: Date.now(), ended: t.completed + t.failed + t.canceled, queued: t.queued_tasks });
      while (clusterPoints.length > HISTORY) clusterPoints.shift();
      const rates = [];
      for (let i = 1; i < clusterPoints.length; i++) {
        const dt = (clusterPoints[i].at - clusterPoints[i - 1].at) / 1e6;
        rates.push(dt > 0 ? Math.max(0, clusterPoints[i].ended - clusterPoints[i - 1].ended) / dt : 0);
      }
      throughput.draw(rates);
      queue.draw(clusterPoints.map((h) => h.queued));

      const set = totals.set;
      set("workers", count(t.workers)); set("agents", count(t.agents));
      set("queued", count(t.queued_tasks)); set("running", count(t.running_tasks));
      set("submitted", count(t.submitted)); set("completed", count(t.completed));
      set("failed", count(t.failed)); set("canceled", count(t.canceled));
      set("retained", count(t.retained_tasks)); set("events", count(t.events));
      set("relayed", count(t.calls_relayed)); set("located", count(t.agents_located));
      set("head", `v${c.head.version}${c.head.auth ? "" : " · no token"}`);
      // Without a credential on the head there is nothing to log out of.
      $(".logout").hidden = !c.head.auth;

      groups.sync(c.groups, (g) => g.key);
      groupsNote.textContent = c.groups_total > c.groups.length ? `The ${count(c.groups.length)} largest of ${count(c.groups_total)} groups.` : "";
      page = { offset: c.offset, limit: c.limit };
      workers.sync(c.workers, (w) => w.id);
      const from = c.workers.length ? c.offset + 1 : 0;
      const all = c.workers_matching === t.workers ? "" : ` matching, of ${count(t.workers)}`;
      shown.textContent = `Workers ${count(from)}–${count(c.offset + c.workers.length)} of ${count(c.workers_matching)}${all}`;
      previous.disabled = c.offset === 0;
      next.disabled = c.offset + c.workers.length >= c.workers_matching;
      const n = c.mesh.workers;
      mesh.textContent = n === 0 ? "No worker is on the mesh (calls between agents go through the head)."
        : n === 1 ? "One worker is on the mesh, alone."
          : `${count(n)} workers are on the mesh: each may call the ${count(n - 1)} others.`;
    }

    function update(p) {
      search.value = document.activeElement === search ? search.value : (p.get("q") || "");
      groupSelect.value = GROUPS[p.get("group")] ? p.get("group") : "host";
      sortSelect.value = SORTS[p.get("sort")] ? p.get("sort") : "name";
      $("#worker-groups-title").textContent = `By ${GROUPS[groupSelect.value].toLowerCase()}`;
      query = chosen();
      const q = new URLSearchParams(query);
      const offset = Math.max(0, parseInt(p.get("offset"), 10) || 0);
      if (offset) q.set("offset", offset);
      follow(`/ui/api/cluster/live?${q}`, { cluster: show }, `/ui/api/cluster?${q}`);
    }
    update(params);
    return { title: "Cluster", update };
  }

  /** One line per loaded model of a worker (the model cells line up row by row). */
  const perModel = (w, text) => (w.models.length ? w.models.map((m) => el("div", { text: text(m) })) : ["—"]);

  function modelsCell(w) {
    if (!w.models.length) {
      return [el("div", { class: "muted", text: "none loaded" }),
        w.models_on_disk.length ? el("div", { class: "muted", text: `on disk: ${w.models_on_disk.join(", ")}` }) : null];
    }
    return w.models.map((m) => {
      const used = percent(m.kv_bytes, m.kv_capacity_bytes);
      return el("div", { class: "model" }, el("span", { class: "model-id", text: m.id }), " ",
        m.kv_capacity_bytes ? el("meter", { min: 0, max: m.kv_capacity_bytes, value: m.kv_bytes, low: m.kv_capacity_bytes * 0.7,
          high: m.kv_capacity_bytes * 0.9, optimum: 0, "aria-label": `KV cache of ${m.id}: ${used} used` }) : null,
        m.kv_capacity_bytes ? el("span", { class: "muted", text: ` ${bytePair(m.kv_bytes, m.kv_capacity_bytes)}` }) : null);
    });
  }

  // ---------------------------------------------------------------------- agents page

  function agentsPage() {
    const open = new Set(); // agents whose spec the reader unfolded (kept across updates)
    const tasksOf = (a, state, n) => el("a", { href: `#/tasks?agent=${encodeURIComponent(a.name)}&state=${state}`, text: count(n) });
    const agents = liveTable("agents", "Agents", "agent", [
      { title: "Agent", head: true, sig: (a) => [a.name, a.version, a.description, a.tools, a.spec], render: (a) => {
        const details = el("details", { open: open.has(a.name) },
          el("summary", {}, el("span", { class: "agent-name", text: a.name }), el("span", { class: "muted", text: ` v${a.version}` })),
          a.description ? el("p", { class: "muted", text: a.description }) : null,
          a.tools.length ? el("p", { text: `Tools: ${a.tools.join(", ")}` }) : null,
          el("pre", { class: "spec", tabindex: 0, "aria-label": `Spec of ${a.name}`, text: JSON.stringify(a.spec, null, 2) }));
        details.addEventListener("toggle", () => (details.open ? open.add(a.name) : open.delete(a.name)));
        return [details];
      } },
      { title: "Model", show: (a) => a.model },
      { title: "Running", cls: "num", sig: (a) => a.running, render: (a) => [tasksOf(a, "working", a.running)] },
      { title: "Queued", cls: "num", sig: (a) => a.queued, render: (a) => [tasksOf(a, "queued", a.queued)] },
      { title: "Submitted", cls: "num", show: (a) => count(a.submitted) },
      { title: "Done: completed / failed / canceled", cls: "num", sig: (a) => a.done, render: (a) => [
        el("span", { class: "state-completed", text: count(a.done.completed) }), " / ",
        el("span", { class: a.done.failed ? "state-failed" : null, text: count(a.done.failed) }), " / ",
        el("span", { text: count(a.done.canceled) })] },
      { title: "Latency p50 / p90 / p99", cls: "num", sig: (a) => a.latency_ms, render: (a) => {
        const l = a.latency_ms;
        if (!l) return ["—"];
        return [el("div", { text: `${duration(l.p50)} / ${duration(l.p90)} / ${duration(l.p99)}` }),
          el("div", { class: "muted", text: `over ${plural(l.count, "task")}` })];
      } },
      { title: "Called by", cls: "callers", sig: (a) => a.callers, render: (a) => (a.callers.length
        ? a.callers.map((c) => el("div", { "data-caller": c.agent, title: `${count(c.relayed)} calls run by the head, ${count(c.located)} lookups over the mesh` },
          el("span", { text: c.agent }), el("span", { class: "muted", text: ` ×${count(c.relayed + c.located)}` })))
        : ["—"]) },
      { title: "Actors on", show: (a) => a.actors.join(", ") || "—" },
      { title: "Running on", show: (a) => a.workers.join(", ") || "—" },
    ], "No agent is registered.");
    view.append(el("h1", { tabindex: -1, text: "Agents" }),
      el("p", { class: "muted", text: "Finished-task counts and latencies (submitted → finished) are over the tasks the head still retains. Unfold an agent for its spec." }),
      agents.wrap);
    follow("/ui/api/agents/live", { agents: (v) => agents.sync(v.agents, (a) => a.name) }, "/ui/api/agents");
    return { title: "Agents" };
  }

  // ----------------------------------------------------------------------- tasks page

  function tasksPage(_, params) {
    const agentSelect = el("select", { id: "filter-agent", name: "agent" }, el("option", { value: "", text: "All agents" }));
    const stateSelect = el("select", { id: "filter-state", name: "state" }, el("option", { value: "", text: "Any state" }),
      STATES.map((s) => el("option", { value: s, text: s })));
    const workerInput = el("input", { id: "filter-worker", type: "search", name: "worker", autocomplete: "off", spellcheck: "false", placeholder: "any", size: 12 });
    const searchInput = el("input", { id: "filter-search", type: "search", name: "q", autocomplete: "off", spellcheck: "false",
      placeholder: "#number, an id, a part of the input…", title: "Every word must match: #N a task's number, anything else a part of its id, agent, worker, context, caller or the start of its input" });
    const limitSelect = el("select", { id: "filter-limit", name: "limit" }, [50, 100, 500].map((n) => el("option", { value: n, text: n })));
    const form = el("form", { class: "filters", role: "search", "aria-label": "Filter tasks" },
      el("span", { class: "field" }, el("label", { for: "filter-search", text: "Search" }), searchInput),
      el("span", { class: "field" }, el("label", { for: "filter-agent", text: "Agent" }), agentSelect),
      el("span", { class: "field" }, el("label", { for: "filter-state", text: "State" }), stateSelect),
      el("span", { class: "field" }, el("label", { for: "filter-worker", text: "Worker" }), workerInput),
      el("span", { class: "field" }, el("label", { for: "filter-limit", text: "Show" }), limitSelect));
    const chosen = () => {
      const q = new URLSearchParams();
      if (searchInput.value.trim()) q.set("q", searchInput.value.trim());
      if (agentSelect.value) q.set("agent", agentSelect.value);
      if (stateSelect.value) q.set("state", stateSelect.value);
      if (workerInput.value.trim()) q.set("worker", workerInput.value.trim());
      if (limitSelect.value !== "100") q.set("limit", limitSelect.value);
      return q;
    };
    // Pages older than the newest: `after` is the number of the last task of the page
    // before; the pages walked through are kept, for "Newer".
    let cursors = [];
    let after = 0;
    const go = (q, push) => {
      const hash = `#/tasks${q.toString() ? `?${q}` : ""}`;
      if (push) location.hash = hash; // the router calls update()
      else replaceQuery("tasks", q);
    };
    form.addEventListener("submit", (e) => { e.preventDefault(); cursors = []; go(chosen(), false); });
    form.addEventListener("change", (e) => {
      if (e.target === searchInput || e.target === workerInput) return;
      cursors = [];
      go(chosen(), true);
    });
    onTyped(searchInput, () => { cursors = []; go(chosen(), false); });
    onTyped(workerInput, () => { cursors = []; go(chosen(), false); });
    const total = el("p", { id: "tasks-total", class: "muted", role: "status", "aria-live": "polite" });
    const newest = el("button", { type: "button", id: "tasks-newest", text: "↑ Newest", disabled: true });
    const newer = el("button", { type: "button", id: "tasks-newer", text: "← Newer", disabled: true });
    const older = el("button", { type: "button", id: "tasks-older", text: "Older →", disabled: true });
    const pager = el("nav", { class: "pager", "aria-label": "Pages of tasks" }, newest, newer, older);
    let nextAfter = null;
    const turn = (to) => {
      const q = chosen();
      if (to) q.set("after", to);
      go(q, true);
    };
    newest.addEventListener("click", () => { cursors = []; turn(0); });
    newer.addEventListener("click", () => turn(cursors.pop() || 0));
    older.addEventListener("click", () => { if (nextAfter) { cursors.push(after); turn(nextAfter); } });
    const tasks = liveTable("tasks", "Tasks, newest first", "task", [
      { title: "Task", head: true, sig: (t) => [t.id, t.number], render: (t) => [
        el("a", { class: "task-link", href: taskHref(t.id), "aria-label": `Task ${t.number} (${t.id})` },
          `#${t.number}`, el("span", { class: "id", text: ` ${short(t.id)}` }))] },
      { title: "Agent", show: (t) => t.agent },
      { title: "State", cls: "state", sig: (t) => t.state, render: (t) => [badge(t.state)] },
      { title: "Attempt", cls: "num", show: (t) => t.attempt },
      { title: "Worker", show: (t) => t.worker || "—" },
      { title: "Events", cls: "num", show: (t) => count(t.events) },
      { title: "Submitted", cls: "num", show: (t) => clock(t.submitted_at_us) },
      { title: "Took", cls: "num", show: (t) => since(t.submitted_at_us, t.finished_at_us) },
      { title: "Input", cls: "input", sig: (t) => t.input, render: (t) => [el("span", { title: t.input, text: t.input })] },
      { title: "Called by", sig: (t) => t.parent, render: (t) => [t.parent ? el("a", { class: "task-link", href: taskHref(t.parent), text: short(t.parent) }) : "—"] },
    ], "No task matches these filters.");
    view.append(el("h1", { tabindex: -1, text: "Tasks" }), form, total, pager, tasks.wrap);

    // The agent filter offers the registered agents (asked once per visit of the page).
    request("/ui/api/agents").then((v) => {
      const picked = agentSelect.value;
      for (const a of v.agents) if (a.name !== picked) agentSelect.append(el("option", { value: a.name, text: a.name }));
      agentSelect.value = picked;
    }).catch((e) => note(`Could not list the agents: ${e.message}`));

    function update(p) {
      const agent = p.get("agent") || "";
      if (agent && ![...agentSelect.options].some((o) => o.value === agent)) agentSelect.append(el("option", { value: agent, text: agent }));
      agentSelect.value = agent;
      stateSelect.value = STATES.includes(p.get("state")) ? p.get("state") : "";
      limitSelect.value = ["50", "500"].includes(p.get("limit")) ? p.get("limit") : "100";
      // What the reader is typing stays as typed.
      if (document.activeElement !== searchInput) searchInput.value = p.get("q") || "";
      if (document.activeElement !== workerInput) workerInput.value = p.get("worker") || "";
      after = Math.max(0, parseInt(p.get("after"), 10) || 0);
      if (!after) cursors = [];
      tasks.clear();
      total.textContent = "";
      const q = new URLSearchParams({ agent, state: stateSelect.value, limit: limitSelect.value,
        q: p.get("q") || "", worker: p.get("worker") || "" });
      if (after) q.set("after", after);
      follow(`/ui/api/tasks/live?${q}`, {
        tasks(v) {
          const first = after ? "" : "the newest ";
          const shown = v.tasks.length < v.total ? ` (${first}${count(v.tasks.length)} shown${after ? ", older than the first page" : ""})` : "";
          // A search looks at so many tasks a page: past them, "Older" searches on.
          const partial = v.complete ? "" : `; ${count(v.searched_at_most)} tasks searched, "Older" searches on`;
          total.textContent = `${v.complete ? "" : "at least "}${plural(v.total, "task")}${shown}${partial}`;
          nextAfter = v.next_after;
          older.disabled = !nextAfter;
          newer.disabled = !after;
          newest.disabled = !after;
          tasks.sync(v.tasks, (t) => t.id);
        },
        error(message) { total.textContent = message; tasks.clear(message); },
      }, `/ui/api/tasks?${q}&limit=1`);
    }
    update(params);
    return { title: "Tasks", update };
  }

  // ------------------------------------------------------------------------ task page

  function taskPage(id) {
    const heading = el("h1", { tabindex: -1 }, "Task ", el("code", { text: id }));
    const head = facts("task-facts", [["agent", "Agent"], ["state", "State"], ["attempt", "Attempt"], ["worker", "Worker"],
      ["parent", "Called by"], ["submitted", "Submitted"], ["events", "Events"], ["context", "Context"]]);
    const agent = el("span", { id: "task-agent" });
    const state = el("span", { id: "task-state", class: "badge" });
    head.set("agent", agent);
    head.set("state", state);
    const parentSlot = el("span");
    head.set("parent", parentSlot);
    const cancel = el("button", { id: "cancel", type: "button", class: "danger", hidden: true, text: "Cancel task" });
    const alert = el("p", { id: "task-alert", class: "error", role: "alert" });
    const timings = el("ol", { id: "timings", class: "timings", "aria-label": "Timings, from submission" });
    const input = el("pre", { class: "text", tabindex: 0 });
    const inputSummary = el("summary", { text: "Input" });
    const output = el("pre", { id: "task-output", class: "text output empty", tabindex: 0, "aria-live": "polite", "aria-label": "Output" });
    const outText = document.createTextNode(""); // the one text node streamed text goes to
    output.append(outText);
    const error = el("p", { id: "task-error", class: "error", hidden: true });
    const usage = el("p", { id: "task-usage", class: "muted" });
    const tree = el("ul", { id: "subtasks", class: "tree" });
    const events = el("ol", { id: "events", class: "events" });
    const graph = callGraph(id);
    view.append(heading, head.dl, el("div", { class: "actions" }, cancel), alert,
      el("h2", { text: "Timings" }), timings,
      el("details", { class: "input" }, inputSummary, input),
      el("h2", { text: "Output" }), output, error, usage,
      el("h2", { text: "Sub-task tree" }), tree,
      el("h2", { text: "Call graph" }), graph.node,
      el("h2", { text: "Events" }), events);

    let task = null; // the last TaskView
    let lastSeq = 0; // events up to this one are on the page (a resumed stream repeats none)
    let lostWorker = ""; // the worker of the latest scheduled/failed event, for "retrying"
    const calls = new Map(); // call id -> {name, slot for the sub-task link, sig}
    let run = null; // the <li> of the current run of text events, and its figures
    let pending = ""; // streamed text not yet on the page: written once per frame
    let frame = 0;
    let cut = ""; // why the server cut the stream, until it is followed again

    function flush() {
      frame = 0;
      if (pending) {
        const atEnd = output.scrollHeight - output.scrollTop - output.clientHeight < 24;
        outText.appendData(pending);
        pending = "";
        if (atEnd) output.scrollTop = output.scrollHeight;
      }
      output.classList.toggle("empty", !outText.length);
      if (run && run.dirty) {
        run.dirty = false;
        run.info.textContent = `${plural(run.count, "delta")}, ${plural(run.chars, "character")}: “${clip(run.preview, 80)}”`;
      }
    }
    const later = () => { if (!frame) frame = requestAnimationFrame(flush); };

    function timing(label, us) {
      const t = task.timings;
      const value = label === "queued" ? (t.submitted_us ? "0 ms" : "—") : since(t.submitted_us, us);
      return el("li", { class: us ? null : "pending" }, el("span", { class: "muted", text: `${label} ` }), el("strong", { text: value }));
    }

    function show(v) {
      task = v;
      heading.replaceChildren(`Task #${v.number} `, el("code", { class: "id", text: v.id }));
      document.title = `Task #${v.number} (${v.state}) · agentfleet inspector`;
      agent.textContent = v.agent;
      state.textContent = v.state;
      state.className = `badge state-${v.state}`;
      head.set("attempt", v.attempt);
      head.set("worker", v.worker || "—");
      rebuild(parentSlot, v.parent, () => (v.parent
        ? el("a", { id: "task-parent", class: "task-link", href: taskHref(v.parent.task_id), text: `${short(v.parent.task_id)} (call ${v.parent.call_id})` })
        : "—"));
      head.set("submitted", clock(v.submitted_at_us));
      head.set("events", count(v.seq));
      head.set("context", v.context_id ? el("span", { title: v.context_id, text: clip(v.context_id, 13) }) : "—");
      cancel.hidden = TERMINAL.has(v.state);
      if (input.textContent !== v.input) input.textContent = v.input;
      inputSummary.textContent = `Input (${plural(v.input.length, "character")})`;
      error.textContent = v.error;
      error.hidden = !v.error;
      const u = v.usage;
      usage.textContent = u.prompt_tokens || u.completion_tokens
        ? `Usage: ${count(u.prompt_tokens)} prompt tokens (${count(u.cached_tokens)} cached), ${count(u.completion_tokens)} completion tokens` : "";
      graph.refresh();
      const t = v.timings;
      timings.replaceChildren(timing("queued", t.submitted_us), timing("scheduled", t.scheduled_us),
        timing("first token", t.first_token_us), timing("done", t.finished_us));
      // The tree: the caller, this task, the tasks its tool calls started.
      rebuild(tree, [v.parent, v.state, v.children], () => {
        const children = el("ul", {}, v.children.map((c) => el("li", {},
          el("a", { class: "task-link", href: taskHref(c.task_id), text: short(c.task_id) }),
          ` ${c.agent} `, badge(c.state), el("span", { class: "muted", text: ` call ${c.call_id}` }))));
        const self = el("li", {}, el("strong", { text: `this task: ${v.agent} ` }), badge(v.state),
          v.children.length ? children : el("span", { class: "muted", text: " (no sub-tasks)" }));
        return v.parent
          ? el("li", {}, el("a", { class: "task-link", href: taskHref(v.parent.task_id), text: short(v.parent.task_id) }),
            el("span", { class: "muted", text: " caller" }), el("ul", {}, self))
          : self;
      });
      linkCalls();
      reconcile();
    }

    /** Once every stored event is shown, the streamed text is the task's output; where it
     * is not (events the head no longer holds), the head's copy wins. */
    function reconcile() {
      if (!task || task.seq !== lastSeq) return;
      flush();
      if (outText.data !== task.output) {
        outText.data = task.output;
        flush();
      }
    }

    /** Tool calls get a link to the sub-task they started, once the task view names it. */
    function linkCalls() {
      for (const c of task ? task.children : []) {
        const call = calls.get(c.call_id);
        if (!call || call.sig === c.task_id + c.state) continue;
        call.sig = c.task_id + c.state;
        call.slot.replaceChildren("→ ", el("a", { class: "subtask-link", "data-task": c.task_id, href: taskHref(c.task_id), text: `sub-task ${short(c.task_id)} (${c.agent})` }), " ", badge(c.state));
      }
    }

    function item(e, kind, ...content) {
      const at = task && task.timings.submitted_us ? `+${since(task.timings.submitted_us, e.at_us)}` : clock(e.at_us);
      return el("li", { "data-seq": e.seq, "data-kind": e.kind },
        el("time", { datetime: new Date(e.at_us / 1000).toISOString(), title: clock(e.at_us), text: at }),
        el("span", { class: "kind", text: kind }), el("span", { class: "what" }, ...content));
    }

    function onEvent(e) {
      if (e.seq <= lastSeq) return; // already shown: the stream resumed after a cut
      lastSeq = e.seq;
      if (e.kind === "text") {
        pending += e.text;
        if (!run) {
          run = { count: 0, chars: 0, preview: "", info: el("span"), dirty: true };
          events.append(item(e, "text", run.info));
        }
        run.count += 1;
        run.chars += e.text.length;
        if (run.preview.length < 81) run.preview += e.text;
        run.dirty = true;
        later();
        return;
      }
      flush(); // the run's figures are final before anything comes after it
      run = null;
      let kind = e.kind.replace("_", " ");
      let content;
      switch (e.kind) {
        case "submitted": content = [`to ${e.agent}`]; break;
        case "scheduled":
          lostWorker = e.worker;
          content = [`on ${e.worker}`, e.attempt > 1 ? ` (attempt ${e.attempt})` : ""];
          break;
        case "working": content = []; break;
        case "tool_call": {
          const slot = el("span", { class: "subtask" });
          calls.set(e.call_id, { name: e.name, slot, sig: "" });
          const replayed = e.replayed ? "replayed from a lost attempt, not made again " : "";
          content = [el("strong", { text: e.name }), el("span", { class: "muted", text: ` call ${e.call_id} ${replayed}` }), slot,
            el("pre", { class: "args", tabindex: 0, text: pretty(e.arguments) })];
          break;
        }
        case "tool_result": {
          const call = calls.get(e.call_id);
          kind = e.is_error ? "tool error" : "tool result";
          content = [el("span", { class: "muted", text: `${call ? call.name : "call"} ${e.call_id}` }),
            el("pre", { class: e.is_error ? "result is-error" : "result", tabindex: 0, text: e.output })];
          break;
        }
        case "completed": content = [`${count(e.usage.completion_tokens)} tokens generated`]; break;
        case "failed":
          if (e.worker) lostWorker = e.worker;
          content = [el("span", { class: "error", text: `${e.worker ? `on ${e.worker}: ` : ""}${e.error}` })];
          break;
        case "canceled": content = [e.reason || "no reason given"]; break;
        case "input_required":
          kind = e.tool ? "approval asked" : "question";
          content = [el("pre", { class: "result", tabindex: 0, text: e.prompt })];
          break;
        case "input_received":
          kind = e.rejected ? "rejected" : "reply";
          content = [el("pre", { class: e.rejected ? "result is-error" : "result", tabindex: 0, text: e.text })];
          break;
        case "retrying":
          // A new attempt starts over: the output shown is the new attempt's.
          pending = "";
          outText.data = "";
          flush();
          content = [el("span", { class: "warn", text: `attempt ${e.failed_attempt} failed${lostWorker ? ` (worker ${lostWorker} lost)` : ""}: ${e.reason}` })];
          break;
        case "embeddings": content = [`${count(e.count)} vectors of ${count(e.dims)} dimensions`]; break;
        case "artifact": {
          const what = e.data !== undefined ? "data" : e.url ? `${e.media_type} at ${e.url}` : `${e.media_type}, ${count(e.bytes)} bytes`;
          content = [el("strong", { text: e.name || e.id }), el("span", { class: "muted", text: ` ${what}` })];
          if (e.description) content.push(el("span", { text: ` ${e.description}` }));
          if (e.data !== undefined) content.push(el("pre", { class: "result", tabindex: 0, text: pretty(e.data) }));
          break;
        }
        default: content = [JSON.stringify(e)];
      }
      events.append(item(e, kind, ...content));
      linkCalls();
    }

    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      cancel.setAttribute("aria-busy", "true");
      alert.textContent = "";
      try {
        const v = await request(`/ui/api/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST", headers: { "X-Fleet-UI": "1" } });
        // The stream may have brought the task further already: keep the newer view.
        if (!task || v.seq >= task.seq) show(v);
      } catch (e) {
        alert.textContent = `Could not cancel the task: ${e.message}`;
      } finally {
        cancel.disabled = false;
        cancel.removeAttribute("aria-busy");
      }
    });

    follow(`/ui/api/tasks/${encodeURIComponent(id)}/live`, {
      task: show,
      event: onEvent,
      end() {
        reconcile();
        flush();
        graph.refresh(true);
        stop(); // else EventSource would reconnect
        status("ended", "done");
      },
      error(message) {
        cut = message;
        note(`${message} — reconnecting…`);
      },
      open() {
        if (cut) note(`${cut} — resumed after event ${lastSeq}.`);
        cut = "";
      },
    }, `/ui/api/tasks/${encodeURIComponent(id)}`);
    return { title: `Task ${short(id)}` };
  }

  // ------------------------------------------------------------------------ call graph

  /**
   * The call graph of task `id`'s family, from the task a client submitted: a row per task
   * (its bar from submission to end) and per call that is not a task on the head (a tool,
   * or an agent reached over the mesh), in call order under their caller; an edge from the
   * moment of each call to what it called, labelled with the call's name, time and result.
   * `refresh()` asks the head again, at most once a second.
   */
  function callGraph(id) {
    const node = el("div", { id: "call-graph", class: "graph-wrap" }, el("p", { class: "muted", text: "Loading…" }));
    let last = null;
    let asked = 0;
    let again = 0;
    let busy = false;

    async function load() {
      busy = true;
      asked = Date.now();
      try {
        const g = await request(`/ui/api/tasks/${encodeURIComponent(id)}/graph`);
        heard(g.now_us);
        const sig = JSON.stringify([g.tasks, g.calls]);
        if (sig !== last) {
          last = sig;
          draw(g);
        }
      } catch (e) {
        node.replaceChildren(el("p", { class: "muted", text: `No call graph: ${e.message}` }));
      } finally {
        busy = false;
      }
    }

    function refresh(now = false) {
      if (!document.body.contains(node) && asked) return;
      const wait = now ? 0 : Math.max(0, 1000 - (Date.now() - asked));
      clearTimeout(again);
      again = setTimeout(() => { if (busy) refresh(now); else load(); }, wait);
    }

    function draw(g) {
      const tasks = new Map(g.tasks.map((t) => [t.id, t]));
      const callsOf = new Map();
      for (const c of g.calls) {
        if (!callsOf.has(c.from)) callsOf.set(c.from, []);
        callsOf.get(c.from).push(c);
      }
      // Rows in call order, depth first: a task, then what each of its calls reached.
      const rows = [];
      const placed = new Set();
      const walk = (t, depth) => {
        placed.add(t.id);
        rows.push({ kind: "task", t, depth });
        for (const c of callsOf.get(t.id) || []) {
          const child = c.task && tasks.get(c.task);
          if (child && !placed.has(child.id)) {
            rows.push({ kind: "edge", c, depth: depth + 1, child });
            walk(child, depth + 1);
          } else rows.push({ kind: "call", c, depth: depth + 1 });
        }
      };
      const root = tasks.get(g.root);
      if (!root) return;
      walk(root, 0);
      const now = headNow();
      const from = root.submitted_us;
      const ends = [...g.tasks.map((t) => t.finished_us || now), ...g.calls.map((c) => c.result_us || now)];
      const to = Math.max(from + 1000, ...ends);
      const width = Math.max(480, node.clientWidth || 900);
      const left = 260;
      const rowH = 22;
      const top = 22;
      const taskRows = rows.filter((r) => r.kind !== "edge");
      const height = top + taskRows.length * rowH + 4;
      const x = (us) => left + ((Math.min(Math.max(us, from), to) - from) / (to - from)) * (width - left - 70);
      const svg = svgEl("svg", { id: "graph", class: "graph", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
        "aria-label": `Call graph: ${plural(g.tasks.length, "task")} and ${plural(g.calls.length, "call")}, from task ${short(g.root)}` });
      for (const at of ticks(from, to, Math.max(2, Math.floor((width - left) / 120)))) {
        svg.append(svgEl("line", { class: "grid", x1: x(at), x2: x(at), y1: top - 4, y2: height }),
          svgText({ class: "axis", x: x(at), y: 12, "text-anchor": "middle" }, tick(at, from)));
      }
      const yOf = new Map(); // task id -> its row's top
      let i = 0;
      const edges = [];
      for (const r of rows) {
        if (r.kind === "edge") { edges.push(r); continue; }
        const y = top + i * rowH;
        i += 1;
        const indent = 4 + r.depth * 14;
        if (r.kind === "task") {
          const t = r.t;
          yOf.set(t.id, y);
          const end = t.finished_us || now;
          const row = svgEl("g", { class: `graph-task${t.id === id ? " current" : ""}`, "data-task": t.id, "data-agent": t.agent, "data-state": t.state, tabindex: 0, role: "link" },
            svgEl("rect", { class: "band", x: 0, y, width, height: rowH }),
            svgText({ class: "row-label", x: indent, y: y + 15 }, `${clip(t.agent, 22)} · ${short(t.id)}`),
            titled(svgEl("rect", { class: `bar state-${t.state}`, x: x(t.submitted_us), y: y + 4, width: Math.max(2, x(end) - x(t.submitted_us)), height: rowH - 8, rx: 2 }),
              `${t.agent} task ${t.id}: ${t.state}${t.worker ? ` on ${t.worker}` : ""}, ${since(t.submitted_us, end)}${t.attempt > 1 ? `, attempt ${t.attempt}` : ""}`),
            svgText({ class: "bar-label", x: Math.min(width - 66, x(end) + 4), y: y + 15 }, since(t.submitted_us, end)));
          const go = () => { if (t.id !== id) location.hash = taskHref(t.id); };
          row.addEventListener("click", go);
          row.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
          svg.append(row);
        } else {
          const c = r.c;
          const end = c.result_us || now;
          const what = c.kind === "mesh" ? "agent over the mesh" : c.kind === "task" ? "agent" : "tool";
          const result = c.result_us ? (c.is_error ? "error" : "ok") : "waiting";
          svg.append(svgEl("g", { class: `graph-call call-${c.kind}`, "data-call": c.call_id, "data-from": c.from, "data-kind": c.kind, "data-result": result },
            svgText({ class: "row-label muted", x: indent, y: y + 15 }, `→ ${clip(c.name, 24)} (${what})`),
            titled(svgEl("rect", { class: `call-bar result-${result}`, x: x(c.at_us), y: y + 8, width: Math.max(2, x(end) - x(c.at_us)), height: rowH - 16 }),
              `${c.name} (${what}) called by ${short(c.from)}: ${result}, ${since(c.at_us, end)}${c.replayed ? ", replayed" : ""}`),
            svgText({ class: "bar-label", x: Math.min(width - 66, x(end) + 4), y: y + 15 }, `${since(c.at_us, end)} ${result}`)));
          const fromY = yOf.get(c.from);
          if (fromY !== undefined) {
            svg.append(svgEl("path", { class: `edge result-${result}`, "data-from": c.from, "data-call": c.call_id, d: `M${x(c.at_us)},${fromY + rowH - 4} V${y + rowH / 2} H${x(c.at_us) + 4}` }));
          }
        }
      }
      // Edges to sub-tasks: from the call's moment on the caller's row to the sub-task's bar.
      for (const r of edges) {
        const c = r.c;
        const [fromY, toY] = [yOf.get(c.from), yOf.get(r.child.id)];
        if (fromY === undefined || toY === undefined) continue;
        const result = c.result_us ? (c.is_error ? "error" : "ok") : "waiting";
        svg.append(titled(svgEl("path", { class: `edge result-${result}`, "data-from": c.from, "data-to": r.child.id, "data-call": c.call_id, "data-result": result,
          d: `M${x(c.at_us)},${fromY + rowH - 4} V${toY + rowH / 2} H${x(r.child.submitted_us)}` }),
        `${c.name}: called at +${duration((c.at_us - from) / 1000)}, ${c.result_us ? `answered after ${since(c.at_us, c.result_us)} (${result})` : "no answer yet"}`));
      }
      const parts = [svg];
      if (g.truncated) parts.push(el("p", { class: "warn", text: `Cut at ${count(g.max_tasks)} tasks (or a task's first calls): the rest is on the tasks' own pages.` }));
      node.replaceChildren(...parts);
    }

    return { node, refresh };
  }

  // -------------------------------------------------------------------- timeline page

  const WINDOWS = [[60, "last minute"], [300, "last 5 minutes"], [900, "last 15 minutes"], [3600, "last hour"], [0, "everything retained"]];

  function timelinePage(_, params) {
    const windowSelect = el("select", { id: "timeline-window", name: "window" }, WINDOWS.map(([s, label]) => el("option", { value: s, text: label })));
    const bySelect = el("select", { id: "timeline-by", name: "by" }, el("option", { value: "worker", text: "worker" }), el("option", { value: "agent", text: "agent" }));
    const follow_ = el("input", { id: "timeline-follow", type: "checkbox", checked: true });
    const zoomIn = el("button", { type: "button", id: "timeline-zoom-in", text: "Zoom in" });
    const zoomOut = el("button", { type: "button", id: "timeline-zoom-out", text: "Zoom out" });
    const zoomReset = el("button", { type: "button", id: "timeline-zoom-reset", text: "Whole window", hidden: true });
    const form = el("form", { class: "filters", "aria-label": "Timeline" },
      el("span", { class: "field" }, el("label", { for: "timeline-window", text: "Window" }), windowSelect),
      el("span", { class: "field" }, el("label", { for: "timeline-by", text: "Rows by" }), bySelect),
      el("span", { class: "field" }, follow_, el("label", { for: "timeline-follow", text: "Follow now" })),
      el("span", { class: "field zoom" }, zoomIn, zoomOut, zoomReset));
    form.addEventListener("submit", (e) => e.preventDefault());
    const summary = el("p", { id: "timeline-summary", class: "muted", role: "status", text: "Loading…" });
    const plot = el("div", { class: "timeline-wrap" });
    const legend = el("p", { class: "legend" }, ["scheduled", "working", "input-required", "completed", "failed", "canceled", "retried"].map((s) =>
      el("span", { class: "legend-item" }, el("span", { class: `swatch state-${s}` }), ` ${s} `)),
      el("span", { class: "legend-item" }, el("span", { class: "swatch queued-lead" }), " queued "));
    view.append(el("h1", { tabindex: -1, text: "Timeline" }),
      el("p", { class: "muted", text: "Each bar is a task's attempt on a worker, from when it was scheduled to its end; the thin line before it is the time it waited in the queue, a dashed line links an attempt to its retry. Click a bar to open its task; drag across the chart (or use the buttons) to zoom in." }),
      form, legend, summary, plot);

    let last = null;
    let timer = null;
    let zoom = null; // [from, to] in µs while zoomed in: the view stops following now
    let shown = null; // the [from, to] drawn last
    const zoomTo = (range) => {
      zoom = range;
      if (zoom) follow_.checked = false;
      zoomReset.hidden = !zoom;
      draw();
    };
    zoomIn.addEventListener("click", () => {
      if (!shown) return;
      const [a, b] = shown;
      const mid = (a + b) / 2;
      const half = Math.max(5e4, (b - a) / 4);
      zoomTo([mid - half, mid + half]);
    });
    zoomOut.addEventListener("click", () => {
      if (!shown || !last) return;
      const [a, b] = shown;
      const mid = (a + b) / 2;
      const [lo, hi] = [mid - (b - a), mid + (b - a)];
      zoomTo(lo <= last.since_us && hi >= last.until_us ? null : [lo, hi]);
    });
    zoomReset.addEventListener("click", () => { follow_.checked = true; zoomTo(null); });
    const choose = (p) => {
      windowSelect.value = p.get("window") ?? "60";
      if (windowSelect.selectedIndex < 0) windowSelect.value = "60";
      bySelect.value = p.get("by") === "agent" ? "agent" : "worker";
    };
    choose(params);
    const open = () => {
      last = null;
      plot.replaceChildren();
      summary.textContent = "Loading…";
      const q = `window_s=${windowSelect.value}&by=${bySelect.value}`;
      follow(`/ui/api/timeline/live?${q}`, { timeline(t) { heard(t.now_us); last = t; draw(); } }, `/ui/api/timeline?${q}`);
    };
    form.addEventListener("change", (e) => {
      if (e.target === follow_) { if (follow_.checked) zoomTo(null); else draw(); return; }
      location.hash = `#/timeline?window=${windowSelect.value}&by=${bySelect.value}`;
    });
    // Running bars grow and the window slides between the head's snapshots.
    // (Not while the reader points at or tabbed into the chart: a bar drawn anew loses its
    // tooltip and focus.)
    timer = setInterval(() => {
      if (!document.body.contains(plot)) clearInterval(timer);
      else if (follow_.checked && !plot.matches(":hover, :focus-within")) draw();
    }, 1000);

    // Dragging across the chart zooms into the stretch dragged over (the chart is not drawn
    // again meanwhile).
    let geometry = null; // the scale drawn last
    let dragFrom = null;
    const atX = (e) => e.clientX - plot.firstChild.getBoundingClientRect().left;
    const band = (a, b) => {
      const rect = plot.querySelector(".zoom-band");
      if (!rect) return;
      rect.setAttribute("x", a);
      rect.setAttribute("width", Math.max(0, b - a));
      rect.setAttribute("visibility", b > a ? "visible" : "hidden");
    };
    plot.addEventListener("mousedown", (e) => {
      if (!geometry || !plot.firstChild || atX(e) < geometry.left) return;
      dragFrom = atX(e);
      e.preventDefault();
    });
    plot.addEventListener("mousemove", (e) => {
      if (dragFrom !== null) band(Math.min(dragFrom, atX(e)), Math.max(dragFrom, atX(e)));
    });
    const endDrag = (e) => {
      if (dragFrom === null) return;
      const [a, b] = [Math.min(dragFrom, atX(e)), Math.max(dragFrom, atX(e))];
      dragFrom = null;
      band(0, 0);
      const { from, to, left, width } = geometry;
      const usAt = (px) => from + ((Math.min(Math.max(px, left), width - 8) - left) / (width - left - 8)) * (to - from);
      if (b - a >= 6) zoomTo([usAt(a), usAt(b)]);
    };
    plot.addEventListener("mouseup", endDrag);
    plot.addEventListener("mouseleave", endDrag);

    function draw() {
      const t = last;
      if (!t || !document.body.contains(plot) || dragFrom !== null) return;
      const windowUs = Number(windowSelect.value) * 1e6;
      const now = follow_.checked ? Math.max(headNow(), t.until_us) : t.until_us;
      let to = now;
      let from = windowUs ? to - windowUs : Math.min(t.since_us, to - 1e6);
      if (zoom) [from, to] = zoom;
      shown = [from, to];
      const rows = t.rows;
      const of = rows.length < t.rows_total ? ` (the ${rows.length} busiest of ${count(t.rows_total)})` : "";
      summary.textContent = rows.length
        ? `${plural(t.attempts, "attempt")} on ${plural(rows.length, bySelect.value)}${of}${t.dense ? ", drawn as a density: too many to draw one by one" : ""}.`
        : "No task ran in this window.";
      const width = Math.max(480, plot.clientWidth || 900);
      const left = 150;
      const top = 22;
      const rowH = 20;
      const height = top + rows.length * rowH + 4;
      const x = (us) => left + ((Math.min(Math.max(us, from), to) - from) / (to - from)) * (width - left - 8);
      const svg = svgEl("svg", { id: "timeline", class: "timeline", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
        "aria-label": `Timeline of ${plural(t.attempts, "attempt")} by ${bySelect.value}, from ${clock(from)} to ${clock(to)}` });
      for (const at of ticks(from, to, Math.max(2, Math.floor((width - left) / 110)))) {
        svg.append(svgEl("line", { class: "grid", x1: x(at), x2: x(at), y1: top - 4, y2: height }),
          svgText({ class: "axis", x: x(at), y: 12, "text-anchor": "middle" }, clock(at)));
      }
      const rowOf = new Map(rows.map((r, i) => [r.key, i]));
      rows.forEach((r, i) => {
        const y = top + i * rowH;
        svg.append(svgEl("g", { class: "row", "data-row": r.key },
          titled(svgEl("rect", { class: i % 2 ? "band odd" : "band", x: 0, y, width, height: rowH }),
            `${r.key}: ${plural(r.attempts, "attempt")}, busy ${duration(r.busy_us / 1000)}`),
          svgText({ class: "row-label", x: 4, y: y + 14 }, clip(r.key, 20))));
        if (t.dense) {
          const max = Math.max(1, ...r.ran);
          const span = t.until_us - t.since_us;
          const cellW = Math.max(1, (span / t.buckets / (to - from)) * (width - left - 8));
          r.ran.forEach((n, b) => {
            if (!n) return;
            const at = t.since_us + (b * span) / t.buckets;
            svg.append(titled(svgEl("rect", { class: r.failed[b] ? "cell has-failed" : "cell", x: x(at), y: y + 3, width: cellW, height: rowH - 6,
              "data-row": r.key, "fill-opacity": (0.15 + (0.85 * n) / max).toFixed(2) }),
            `${r.key} at ${clock(at)}: ${plural(n, "attempt")} ran${r.failed[b] ? `, ${count(r.failed[b])} failed` : ""}`));
          });
        }
      });
      if (!t.dense) {
        const ends = new Map(); // task -> the end of its previous attempt drawn
        for (const b of t.bars) {
          const i = rowOf.get(bySelect.value === "agent" ? b.agent : b.worker);
          if (i === undefined) continue;
          const y = top + i * rowH;
          const end = b.end_us || now;
          if (end < from || b.start_us > to) continue;
          const g = svgEl("g", { class: "bar-group" });
          if (b.attempt <= 1 && b.submitted_us < b.start_us && b.start_us > from) {
            g.append(svgEl("line", { class: "queued-lead", x1: x(b.submitted_us), x2: x(b.start_us), y1: y + rowH / 2, y2: y + rowH / 2 }));
          }
          const bar = svgEl("rect", { class: `bar state-${b.state}`, x: x(b.start_us), y: y + 3, width: Math.max(2, x(end) - x(b.start_us)), height: rowH - 6, rx: 2,
            "data-task": b.task, "data-attempt": b.attempt, "data-state": b.state, "data-worker": b.worker, "data-agent": b.agent, tabindex: 0, role: "link" });
          titled(bar, `${b.agent} task ${short(b.task)}, attempt ${b.attempt} on ${b.worker}: ${b.state}, ${since(b.start_us, end)}${b.parent ? ` (called by ${short(b.parent)})` : ""}`);
          const go = () => { location.hash = taskHref(b.task); };
          bar.addEventListener("click", go);
          bar.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); } });
          g.append(bar);
          const previous = ends.get(b.task);
          if (previous) {
            g.append(svgEl("path", { class: "retry-link", "data-task": b.task, d: `M${x(previous.at)},${previous.y + rowH / 2} L${x(b.start_us)},${y + rowH / 2}` }));
          }
          ends.set(b.task, { at: end, y });
          svg.append(g);
        }
      }
      svg.append(svgEl("rect", { class: "zoom-band", x: 0, y: top - 4, width: 0, height: height - top + 4, visibility: "hidden" }));
      geometry = { from, to, left, width };
      plot.replaceChildren(svg);
    }

    open();
    return { title: "Timeline", update(p) { choose(p); zoom = null; zoomReset.hidden = true; open(); } };
  }

  // ----------------------------------------------------------------------- charts page

  // The last chart points, kept across visits (bounded): the charts' history.
  const points = [];

  /** A chart of several lines (one per series), with a legend of their latest values. */
  function multiChart(id, caption, format) {
    const W = 320;
    const H = 120;
    const svg = svgEl("svg", { id, class: "multi", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", focusable: "false" });
    const legend = el("ul", { class: "chart-legend" });
    const scale = el("span", { class: "scale muted" });
    const figure = el("figure", { class: "chart wide" }, el("figcaption", {}, caption, scale), svg, legend);
    return {
      figure,
      /** `series`: [[name, values (null: no value)]], oldest first, newest at the right. */
      draw(series) {
        const all = series.flatMap(([, v]) => v).filter((v) => v !== null && Number.isFinite(v));
        const max = Math.max(1e-9, ...all);
        const step = W / (HISTORY - 1);
        svg.replaceChildren(svgEl("line", { class: "base", x1: 0, y1: H - 1, x2: W, y2: H - 1 }));
        const words = [];
        legend.replaceChildren();
        series.forEach(([name, values], i) => {
          const x0 = (HISTORY - values.length) * step;
          const parts = [];
          let run = [];
          values.forEach((v, j) => {
            if (v === null || !Number.isFinite(v)) { if (run.length) parts.push(run); run = []; return; }
            run.push(`${(x0 + j * step).toFixed(1)},${(H - 2 - (v / max) * (H - 8)).toFixed(1)}`);
          });
          if (run.length) parts.push(run);
          for (const p of parts) svg.append(svgEl("polyline", { class: `line series-${i % 8}`, "data-series": name, points: p.join(" ") }));
          const latest = [...values].reverse().find((v) => v !== null && Number.isFinite(v));
          const shown = latest === undefined ? "—" : format(latest);
          words.push(`${name} ${shown}`);
          legend.append(el("li", { "data-series": name }, el("span", { class: `swatch series-${i % 8}` }), ` ${name} `, el("strong", { text: shown })));
        });
        scale.textContent = all.length ? ` · top ${format(max)}` : "";
        svg.setAttribute("aria-label", `${caption}, now: ${words.join("; ") || "no data"}; top of the scale ${format(max)}.`);
      },
    };
  }

  function chartsPage() {
    const charts = {
      tasks: multiChart("chart-tasks", "Tasks per second, started and ended", (v) => `${v.toFixed(1)}/s`),
      levels: multiChart("chart-levels", "Tasks queued and running", (v) => count(Math.round(v))),
      generated: multiChart("chart-generated", "Tokens generated per second, by model", (v) => `${v.toFixed(0)}/s`),
      prompt: multiChart("chart-prompt", "Prompt tokens per second, by model", (v) => `${v.toFixed(0)}/s`),
      workers: multiChart("chart-worker-tokens", "Tokens generated per second, by worker (the busiest)", (v) => `${v.toFixed(0)}/s`),
      ttft: multiChart("chart-ttft", "Time to first token (tasks completed in the last 10 s)", (v) => duration(v)),
      latency: multiChart("chart-latency", "Task latency, submitted to completed (last 10 s)", (v) => duration(v)),
      kv: multiChart("chart-kv", "KV cache memory used, by worker", (v) => bytes(v)),
      prefix: multiChart("chart-prefix", "Prefix-cache hits, by worker (share of lookups)", (v) => `${Math.round(v * 100)}%`),
    };
    const note_ = el("p", { class: "muted", id: "charts-note", text: "A point a second; the page keeps the last two minutes." });
    view.append(el("h1", { tabindex: -1, text: "Charts" }), note_,
      el("section", { class: "charts grid", "aria-label": "Charts" }, Object.values(charts).map((c) => c.figure)));
    if (points.length && Date.now() - points[points.length - 1].seen > 10e3) points.length = 0;

    /** Per-second rates of a counter `get(point)` (null where it went back: a restart). */
    const rate = (get) => points.slice(1).map((p, i) => {
      const [a, b] = [get(points[i]), get(p)];
      const dt = (p.now_us - points[i].now_us) / 1e6;
      return a === undefined || b === undefined || dt <= 0 || b < a ? null : (b - a) / dt;
    });
    const level = (get) => points.map((p) => { const v = get(p); return v === undefined ? null : v; });
    const names = (list) => [...new Set(points.flatMap(list))].sort();
    const worker = (p, id) => p.workers.find((w) => w.id === id);

    function drawAll() {
      charts.tasks.draw([["started", rate((p) => p.started)], ["ended", rate((p) => p.ended)], ["failed", rate((p) => p.failed)]]);
      charts.levels.draw([["queued", level((p) => p.queued)], ["running", level((p) => p.running)]]);
      const models = names((p) => p.models.map((m) => m.id));
      const model = (p, id) => p.models.find((m) => m.id === id);
      charts.generated.draw(models.map((id) => [id, rate((p) => model(p, id)?.generated_tokens)]));
      charts.prompt.draw(models.map((id) => [id, rate((p) => model(p, id)?.prompt_tokens)]));
      const latest = points.length ? points[points.length - 1].workers.map((w) => w.id) : [];
      charts.workers.draw(latest.map((id) => [id, rate((p) => worker(p, id)?.generated_tokens)]));
      const pct = (key, q) => level((p) => (p[key] ? p[key][q] : undefined));
      charts.ttft.draw([["p50", pct("first_token_ms", "p50")], ["p90", pct("first_token_ms", "p90")], ["p99", pct("first_token_ms", "p99")]]);
      charts.latency.draw([["p50", pct("latency_ms", "p50")], ["p90", pct("latency_ms", "p90")], ["p99", pct("latency_ms", "p99")]]);
      charts.kv.draw(latest.map((id) => [id, level((p) => worker(p, id)?.kv_bytes)]));
      charts.prefix.draw(latest.map((id) => [id, points.slice(1).map((p, i) => {
        const [a, b] = [worker(points[i], id), worker(p, id)];
        if (!a || !b) return null;
        const lookups = b.prefix_hits + b.prefix_misses - a.prefix_hits - a.prefix_misses;
        return lookups > 0 ? (b.prefix_hits - a.prefix_hits) / lookups : null;
      })]));
      const last = points[points.length - 1];
      if (last && last.workers_total > last.workers.length) {
        note_.textContent = `A point a second; the page keeps the last two minutes. Per-worker charts show the ${last.workers.length} busiest of ${count(last.workers_total)} workers; the model charts count them all.`;
      }
    }
    drawAll();
    follow("/ui/api/charts/live", {
      point(p) {
        heard(p.now_us);
        points.push({ ...p, seen: Date.now() });
        while (points.length > HISTORY + 1) points.shift();
        drawAll();
      },
    }, "/ui/api/charts");
    return { title: "Charts" };
  }

  // ---------------------------------------------------------------------- topics pages

  function topicsPage() {
    const list = el("ul", { id: "topics", class: "topics" }, el("li", { class: "muted", text: "Loading…" }));
    const name = el("input", { id: "topic-name", type: "text", required: true, autocomplete: "off", spellcheck: "false" });
    const form = el("form", { class: "filters" }, el("label", { for: "topic-name", text: "Follow a topic by name" }), name,
      el("button", { type: "submit", text: "Follow" }));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (name.value.trim()) location.hash = `#/topics/${encodeURIComponent(name.value.trim())}`;
    });
    view.append(el("h1", { tabindex: -1, text: "Topics" }),
      el("p", { class: "muted", text: "Messages are followed through a worker on the mesh, from the moment the page opens." }),
      el("h2", { text: "Topics the agents name" }), list, form);
    status("idle", "done");
    request("/ui/api/topics").then((v) => {
      list.replaceChildren(...v.topics.map((t) => el("li", {}, el("a", { class: "topic-link", href: `#/topics/${encodeURIComponent(t)}`, text: t }))));
      if (!v.topics.length) list.append(el("li", { class: "muted", text: "No agent names a topic." }));
    }).catch((e) => note(`Could not list the topics: ${e.message}`));
    return { title: "Topics" };
  }

  const MAX_MESSAGES = 500;
  function topicPage(topic) {
    const messages = el("ol", { id: "topic-messages", class: "messages", "aria-label": `Messages on ${topic}, newest first` });
    const counter = el("p", { class: "muted", text: "Waiting for messages…" });
    const problem = el("p", { class: "warn", role: "status" });
    view.append(el("h1", { tabindex: -1 }, "Topic ", el("code", { text: topic })),
      el("p", {}, el("a", { href: "#/topics", text: "← all topics" })), problem, counter, messages);
    let received = 0;
    follow(`/ui/api/topics/${encodeURIComponent(topic)}/live`, {
      message(m) {
        received += 1;
        problem.textContent = "";
        messages.prepend(el("li", {},
          el("div", { class: "meta" }, el("time", { text: clock(m.at_us) }), " ", el("strong", { text: m.publisher }),
            el("span", { class: "muted", text: ` at offset ${m.offset}` })),
          el("pre", { class: "body", text: m.body })));
        while (messages.childElementCount > MAX_MESSAGES) messages.lastElementChild.remove();
        counter.textContent = `${plural(received, "message")} (the latest kept, then live)${received > MAX_MESSAGES ? `, the newest ${MAX_MESSAGES} shown` : ""}`;
      },
      // The server closes after it; EventSource tries again a few seconds later.
      error: (message) => { problem.textContent = `${clock(Date.now() * 1000)} — ${message}`; },
    }, "/ui/api/topics");
    return { title: `Topic ${topic}` };
  }

  // --------------------------------------------------------------- conversation pages

  const conversationHref = (c) => `#/conversations/${encodeURIComponent(c.agent)}/${encodeURIComponent(c.context_id)}`;

  function conversationsPage() {
    const rows = el("tbody", {}, el("tr", {}, el("td", { class: "muted", colspan: 5, text: "Loading…" })));
    const table = el("div", { class: "scroll", tabindex: 0, role: "region", "aria-label": "Conversations" },
      el("table", { id: "conversations" },
        el("thead", {}, el("tr", {}, ...["Context", "Agent", "Turns", "Size", "Continued"].map((h) => el("th", { scope: "col", text: h })))),
        rows));
    view.append(el("h1", { tabindex: -1, text: "Conversations" }),
      el("p", { class: "muted", text: "The turns the head keeps for each context, sent with its next task to whichever worker runs it." }),
      table);
    status("idle", "done");
    request("/ui/api/conversations").then((v) => {
      rows.replaceChildren(...v.conversations.map((c) => el("tr", {},
        el("td", {}, el("a", { class: "conversation-link", href: conversationHref(c), text: c.context_id })),
        el("td", { text: c.agent }), el("td", { text: count(c.turns) }), el("td", { text: bytes(c.bytes) }),
        el("td", { text: clock(c.updated_at_us) }))));
      if (!v.conversations.length) rows.append(el("tr", {}, el("td", { class: "muted", colspan: 5, text: "No conversation yet: tasks with a context id start one." })));
      if (v.truncated) note(`The ${v.conversations.length} most recently continued are shown.`);
    }).catch((e) => note(`Could not list the conversations: ${e.message}`));
    return { title: "Conversations" };
  }

  function conversationPage(arg) {
    const [agent, ...rest] = arg.split("/");
    const context = rest.join("/");
    const turns = el("ol", { id: "conversation-turns", class: "messages", "aria-label": `Turns of ${context} with ${agent}, oldest first` });
    view.append(el("h1", { tabindex: -1 }, "Conversation ", el("code", { text: context }), " with ", el("code", { text: agent })),
      el("p", {}, el("a", { href: "#/conversations", text: "← all conversations" })), turns);
    status("idle", "done");
    const made = el("p", { id: "conversation-tasks", class: "muted" });
    view.insertBefore(made, turns);
    // The turns and the tasks that made them: each task's input opens the next user turn
    // that starts with it (a task row carries the first 200 characters of its input).
    const q = new URLSearchParams({ agent, context, limit: 500 });
    Promise.all([
      request(`/ui/api/conversations/${encodeURIComponent(agent)}/${encodeURIComponent(context)}`),
      request(`/ui/api/tasks?${q}`).catch(() => ({ tasks: [], total: 0 })),
    ]).then(([c, listed]) => {
      const tasks = listed.tasks.slice().reverse(); // oldest first, as the turns
      let next = 0;
      const from = (t) => {
        if (t.role !== "user") return null;
        const i = tasks.findIndex((task, k) => k >= next && t.content.startsWith(task.input));
        if (i < 0) return null;
        next = i + 1;
        const task = tasks[i];
        return el("a", { class: "task-link turn-task", href: taskHref(task.id), "data-task": task.id, text: ` from task #${task.number}` });
      };
      turns.replaceChildren(...c.turns.map((t) => el("li", { class: `turn turn-${t.role}` },
        el("div", { class: "meta" }, el("strong", { text: t.role }), t.tool_call_id ? el("span", { class: "muted", text: ` answers ${t.tool_call_id}` }) : "", from(t)),
        el("pre", { class: "body", text: t.content }),
        ...t.tool_calls.map((call) => el("div", { class: "muted" }, "calls ", el("code", { text: call.name }), ` ${clip(call.arguments, 200)}`)))));
      if (!c.turns.length) turns.append(el("li", { class: "muted", text: "No turns kept." }));
      const last = tasks[tasks.length - 1];
      made.replaceChildren(...(listed.total
        ? [`${plural(listed.total, "task")} made these turns${listed.total > tasks.length ? ` (the newest ${count(tasks.length)} linked)` : ""}; the last: `,
          el("a", { class: "task-link", href: taskHref(last.id), text: `#${last.number}` }), "."]
        : ["The head retains none of the tasks that made these turns."]));
    }).catch((e) => note(`Could not read the conversation: ${e.message}`));
    return { title: `Conversation ${context}` };
  }

  // --------------------------------------------------------------------------- router

  const pages = {
    cluster: clusterPage, agents: agentsPage, tasks: tasksPage, task: taskPage, topics: topicsPage, topic: topicPage,
    timeline: timelinePage, charts: chartsPage,
    conversations: conversationsPage, conversation: conversationPage,
  };
  let current = null;

  function parse() {
    const hash = location.hash.replace(/^#\/?/, "");
    const [path, query] = hash.split("?");
    const [first, ...rest] = path.split("/");
    let arg = null;
    try { arg = rest.length && rest.join("/") ? decodeURIComponent(rest.join("/")) : null; } catch { arg = rest.join("/"); }
    let name = first || "cluster";
    if (arg !== null && (name === "tasks" || name === "topics" || name === "conversations")) name = name.slice(0, -1);
    return { name: pages[name] ? name : "missing", arg, params: new URLSearchParams(query || "") };
  }

  function route() {
    const r = parse();
    const section = { task: "tasks", topic: "topics", conversation: "conversations" }[r.name] || r.name;
    for (const link of document.querySelectorAll("nav a[data-nav]")) {
      if (link.dataset.nav === section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    // Same page, other filters: follow the new list without rebuilding the page.
    if (current && current.update && current.name === r.name && current.arg === r.arg) {
      current.update(r.params);
      return;
    }
    const first = !current;
    stop();
    note("");
    view.replaceChildren();
    let page;
    if (r.name === "missing") {
      status("idle", "done");
      view.append(el("h1", { tabindex: -1, text: "No such page" }), el("p", {}, el("a", { href: "#/cluster", text: "Go to the cluster" })));
      page = { title: "No such page" };
    } else page = pages[r.name](r.arg, r.params);
    current = { ...r, ...page };
    if (r.name !== "task") document.title = `${page.title} · agentfleet inspector`;
    if (!first) $("h1", view).focus({ preventScroll: false }); // a reader hears the new page
  }
  route.again = () => { current = null; route(); };

  window.addEventListener("hashchange", route);
  route();
})();
