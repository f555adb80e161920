// The edge-mailbox fleet page: plain JS, no build step. It draws GET /api/fleet (one answer
// for all four tables), refreshes it on a timer, and acts through the POST /api/bulk/...
// routes. Airflow shows it in an iframe of its own origin, so it takes Airflow's theme from
// the parent page and opens task instances in the parent's router.
"use strict";

const API = location.pathname.replace(/\/ui\/[^/]*$/, "");   // {base}/edge-mailbox
const UI_BASE = API.replace(/\/edge-mailbox$/, "");           // Airflow's own base path
const WORKER_STATES = ["running", "idle", "starting", "maintenance requested", "maintenance",
  "draining", "shutting down", "offline", "unknown"];
const KINDS = ["PUT", "GET", "LIST", "HEAD", "DELETE"];
const PENDING_FOR = 600;  // seconds a sent command is shown as pending, at most

const state = {
  fleet: null, me: null, selected: new Set(), pending: new Map(), timer: null, loadedAt: 0,
};
const $ = (sel) => document.querySelector(sel);

// -- theme ---------------------------------------------------------------------------------

// Our variable -> the Chakra token Airflow's UI defines (read from the parent page).
const TOKENS = {
  "--bg": "--chakra-colors-bg", "--bg-subtle": "--chakra-colors-bg-subtle",
  "--bg-muted": "--chakra-colors-bg-muted", "--bg-emphasized": "--chakra-colors-bg-emphasized",
  "--fg": "--chakra-colors-fg", "--fg-muted": "--chakra-colors-fg-muted",
  "--border": "--chakra-colors-border", "--brand": "--chakra-colors-brand-solid",
  "--brand-contrast": "--chakra-colors-brand-contrast",
  "--brand-subtle": "--chakra-colors-brand-subtle", "--danger": "--chakra-colors-fg-error",
  "--font": "--chakra-fonts-body",
};

function parentRoot() {
  try {
    return window.parent !== window ? window.parent.document.documentElement : null;
  } catch (e) {
    return null;  // not of our origin: no theme to take
  }
}

function applyTheme() {
  const root = document.documentElement;
  const host = parentRoot();
  let mode = null;
  if (host) {
    if (host.classList.contains("dark")) mode = "dark";
    else if (host.classList.contains("light")) mode = "light";
  }
  if (!mode) {
    const saved = localStorage.getItem("theme");  // what Airflow's UI stores (next-themes)
    mode = saved === "dark" || saved === "light" ? saved
      : matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  root.dataset.theme = mode;
  for (const name of Object.keys(TOKENS)) root.style.removeProperty(name);
  if (host) {
    const styles = getComputedStyle(host);
    for (const [name, token] of Object.entries(TOKENS)) {
      const value = styles.getPropertyValue(token).trim();
      if (value) root.style.setProperty(name, value);
    }
  }
}

function watchTheme() {
  applyTheme();
  const host = parentRoot();
  if (host) new MutationObserver(applyTheme).observe(host, { attributes: true, attributeFilter: ["class", "style"] });
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);
  window.addEventListener("storage", (e) => { if (e.key === "theme") applyTheme(); });
}

// -- small helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function when(ts) {
  if (!ts) return h("span", { class: "muted" }, "–");
  const d = new Date(ts * 1000);
  return h("span", { class: "nowrap", title: d.toISOString() }, d.toLocaleTimeString());
}

function num(x, digits = 0) {
  return x === null || x === undefined ? "–" : x.toLocaleString(undefined, {
    minimumFractionDigits: digits, maximumFractionDigits: digits,
  });
}

function dollars(x) {
  return x < 0.01 ? `$${x.toFixed(4)}` : `$${x.toFixed(2)}`;
}

function badge(text) {
  return h("span", { class: `badge s-${String(text).replace(/\s+/g, "-")}` }, text);
}

function toast(text) {
  const el = $("#toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 6000);
}

function fillSelect(select, values) {
  const keep = select.value;
  const first = select.options[0];
  select.replaceChildren(first, ...values.map((v) => h("option", { value: v }, v)));
  select.value = values.includes(keep) ? keep : "";
}

// A link to a task instance in Airflow's UI. Inside Airflow's iframe (sandboxed: no top
// navigation) the parent's router is moved with the History API instead.
function taskLink(task, label) {
  const href = `${UI_BASE}/${task.path}`;
  return h("a", {
    href,
    title: `${task.dag_id} / ${task.run_id} / ${task.task_id}`,
    onclick: (event) => {
      if (window.parent === window || event.ctrlKey || event.metaKey) return;
      try {
        const history = window.parent.history;
        const idx = (history.state && typeof history.state.idx === "number") ? history.state.idx + 1 : 0;
        history.pushState({ usr: null, key: Math.random().toString(36).slice(2, 10), idx }, "", href);
        window.parent.dispatchEvent(new PopStateEvent("popstate", { state: history.state }));
        event.preventDefault();
      } catch (e) {
        // not allowed: the link opens in this frame
      }
    },
  }, label);
}

async function call(method, path, body) {
  const response = await fetch(`${API}${path}`, {
    method,
    credentials: "same-origin",
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const detail = data && data.detail;
    const text = Array.isArray(detail)
      ? detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("\n")
      : detail || response.statusText;
    const error = new Error(`${response.status}: ${text}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

// -- loading -------------------------------------------------------------------------------

async function load() {
  try {
    if (!state.me) state.me = await call("GET", "/api/me");
    state.fleet = await call("GET", "/api/fleet");
    state.loadedAt = Date.now();
    showProblems(state.fleet.problems);
  } catch (error) {
    if (error.status === 401) {
      location.href = `${API}/ui/`;  // the server sends an anonymous page to Airflow's login
      return;
    }
    showProblems([`Could not load the fleet: ${error.message}`]);
  }
  render();
}

function showProblems(problems) {
  const el = $("#problems");
  el.hidden = !problems || problems.length === 0;
  el.textContent = (problems || []).join("\n");
}

function schedule() {
  clearInterval(state.timer);
  const seconds = Number($("#refresh").value);
  if (seconds > 0) state.timer = setInterval(load, seconds * 1000);
}

// -- drawing -------------------------------------------------------------------------------

function render() {
  const fleet = state.fleet;
  const me = state.me;
  $("#whoami").textContent = me ? `${me.user}${me.can_act ? "" : " (read only)"}` : "";
  if (!fleet) return;
  const requests = Object.values(fleet.requests || {}).reduce((a, b) => a + b, 0);
  $("#status").textContent =
    `updated ${new Date(fleet.generated_at * 1000).toLocaleTimeString()} · ${requests} bucket requests`;
  const known = new Set(fleet.workers.map((w) => w.name));
  for (const name of state.selected) if (!known.has(name)) state.selected.delete(name);
  renderWorkers(fleet);
  renderQueues(fleet);
  renderJobs(fleet);
  renderCost(fleet.cost);
}

function renderWorkers(fleet) {
  const queues = [...new Set(fleet.workers.flatMap((w) => w.queues).concat(fleet.queues.map((q) => q.queue)))].sort();
  fillSelect($("#w-queue"), queues);
  fillSelect($("#w-state"), WORKER_STATES);
  const search = $("#w-search").value.trim().toLowerCase();
  const queue = $("#w-queue").value;
  const wanted = $("#w-state").value;
  const rows = fleet.workers.filter((w) => w.name.toLowerCase().includes(search)
    && (!queue || w.queues.includes(queue)) && (!wanted || w.state === wanted));
  state.shown = rows.map((w) => w.name);
  $("#n-workers").textContent = `${rows.length}/${fleet.workers.length}`;
  const body = $("#workers tbody");
  if (rows.length === 0) {
    body.replaceChildren(h("tr", {}, h("td", { colspan: 11, class: "empty" },
      fleet.workers.length ? "No worker matches the filters." : "No worker has a heartbeat in the bucket.")));
  } else {
    body.replaceChildren(...rows.map(workerRow));
  }
  const all = $("#select-all");
  all.checked = rows.length > 0 && rows.every((w) => state.selected.has(w.name));
  all.indeterminate = !all.checked && rows.some((w) => state.selected.has(w.name));
  renderSelection();
}

function workerRow(w) {
  const selected = state.selected.has(w.name);
  const m = w.metrics || {};
  const used = w.slots_used ?? null;
  const slots = w.concurrency ? h("span", { class: "nowrap" }, `${used}/${w.concurrency}`,
    h("span", { class: "bar" }, h("span", { style: `width:${Math.round(100 * used / w.concurrency)}%` })))
    : "–";
  const system = [
    m.cpu_percent !== undefined ? `CPU ${num(m.cpu_percent)}%` : null,
    m.memory_percent !== undefined ? `mem ${num(m.memory_percent)}%` : null,
    m.disk_free_percent !== undefined ? `disk free ${num(m.disk_free_percent)}%` : null,
    m.load_1m !== undefined ? `load ${num(m.load_1m, 2)}` : null,
  ].filter(Boolean);
  return h("tr", { class: selected ? "selected" : null, "data-worker": w.name },
    h("td", { class: "check" }, h("input", {
      type: "checkbox", checked: selected, "aria-label": `Select ${w.name}`,
      onchange: (e) => { toggle(w.name, e.target.checked); },
    })),
    h("td", { class: "nowrap" }, h("strong", {}, w.name),
      w.kid ? h("div", { class: "small muted mono", title: "the key that signed its heartbeat" }, w.kid.slice(0, 12)) : null),
    h("td", {}, badge(w.state), pendingNote(w),
      w.maintenance_by.length ? h("span", { class: "pending" }, `held by ${w.maintenance_by.join(" and ")}`) : null),
    h("td", {}, w.queues.map((q) => h("span", { class: "chip" }, q))),
    h("td", {}, slots),
    h("td", {}, w.running.length ? w.running.map((r) => h("div", { class: "small" },
      r.task ? taskLink(r.task, `${r.task.dag_id}.${r.task.task_id}${r.task.map_index >= 0 ? `[${r.task.map_index}]` : ""}`)
        : h("span", { class: "mono muted" }, r.job_id))) : h("span", { class: "muted" }, "–")),
    h("td", { class: "small" }, w.version || "–"),
    h("td", { class: "nowrap", title: new Date(w.last_heartbeat * 1000).toISOString() }, `${age(w.heartbeat_age)} ago`),
    h("td", { class: "small" }, system.length ? system.join(" · ") : "–"),
    h("td", { class: "small comment" }, w.maintenance_comment || ""),
    h("td", { class: "num" }, w.command_seq ?? "–"),
  );
}

// A command sent from this page and not yet applied, as the worker's heartbeat says.
function pendingNote(w) {
  const sent = state.pending.get(w.name);
  if (!sent) return null;
  const applied = w.command_seq !== null && w.command_seq >= sent.seq;
  if (applied || Date.now() / 1000 - sent.at > PENDING_FOR) {
    state.pending.delete(w.name);
    return null;
  }
  return h("span", { class: "pending" }, `command ${sent.seq} sent: ${sent.what}`);
}

function toggle(name, on) {
  if (on) state.selected.add(name); else state.selected.delete(name);
  const row = document.querySelector(`tr[data-worker="${CSS.escape(name)}"]`);
  if (row) row.classList.toggle("selected", on);
  renderSelection();
}

function renderSelection() {
  const n = state.selected.size;
  $("#selection").textContent = n ? `${n} selected` : "none selected";
  const canAct = state.me && state.me.can_act;
  for (const button of document.querySelectorAll("#actions button")) {
    button.disabled = !canAct || n === 0;
    button.title = canAct ? "" : "Acting needs access to the Jobs view and the right to edit pools";
  }
}

function renderQueues(fleet) {
  $("#n-queues").textContent = fleet.queues.length;
  const body = $("#queues tbody");
  if (!fleet.queues.length) {
    body.replaceChildren(h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No queue known.")));
    return;
  }
  body.replaceChildren(...fleet.queues.map((q) => h("tr", {},
    h("td", {}, h("strong", {}, q.queue)),
    h("td", { class: "num" }, q.pending),
    h("td", {}, q.oldest_age === null ? "–" : age(q.oldest_age)),
    h("td", {}, q.workers.length ? [`${q.workers.length}: `, q.workers.map((w) => h("span", { class: "chip" }, w))]
      : h("span", { class: "badge s-offline" }, "none")),
  )));
}

function renderJobs(fleet) {
  fillSelect($("#j-state"), [...new Set(fleet.jobs.map((j) => j.state))].sort());
  fillSelect($("#j-queue"), [...new Set(fleet.jobs.map((j) => j.queue))].sort());
  fillSelect($("#j-worker"), [...new Set(fleet.jobs.map((j) => j.worker).filter(Boolean))].sort());
  const search = $("#j-search").value.trim().toLowerCase();
  const st = $("#j-state").value, queue = $("#j-queue").value, worker = $("#j-worker").value;
  const rows = fleet.jobs.filter((j) => {
    const text = j.task ? `${j.task.dag_id} ${j.task.run_id} ${j.task.task_id} ${j.job_id}` : j.job_id;
    return text.toLowerCase().includes(search) && (!st || j.state === st)
      && (!queue || j.queue === queue) && (!worker || j.worker === worker);
  });
  $("#n-jobs").textContent = `${rows.length}/${fleet.jobs.length}`;
  const body = $("#jobs tbody");
  if (!rows.length) {
    body.replaceChildren(h("tr", {}, h("td", { colspan: 10, class: "empty" },
      fleet.jobs.length ? "No job matches the filters." : "No recent job.")));
    return;
  }
  body.replaceChildren(...rows.map((j) => h("tr", {},
    h("td", {}, j.task ? taskLink(j.task, `${j.task.task_id}${j.task.map_index >= 0 ? ` [${j.task.map_index}]` : ""}`)
      : h("span", { class: "mono" }, j.job_id),
      h("div", { class: "small muted" }, j.task ? j.task.dag_id : "callback")),
    h("td", { class: "small mono" }, j.task ? j.task.run_id : "–"),
    h("td", { class: "num" }, j.task && j.task.try_number !== null ? j.task.try_number : "–"),
    h("td", {}, badge(j.state)),
    h("td", {}, h("span", { class: "chip" }, j.queue)),
    h("td", {}, j.worker || h("span", { class: "muted" }, "–")),
    h("td", {}, when(j.enqueued_at)),
    h("td", {}, when(j.claimed_at)),
    h("td", {}, when(j.finished_at)),
    h("td", { class: "num" }, j.claim_latency === null ? "–" : `${num(j.claim_latency, 1)} s`),
  )));
}

function renderCost(cost) {
  $("#prices").textContent = Object.entries(cost.usd_per_1000)
    .map(([k, v]) => `${k} $${v} per 1,000`).join(", ") + `, others $${cost.other_usd_per_1000}`;
  const line = (cells, r) => [
    ...cells,
    ...KINDS.map((k) => h("td", { class: "num" }, num(r.requests_per_hour[k] || 0))),
    h("td", { class: "num" }, num(Object.values(r.requests_per_hour).reduce((a, b) => a + b, 0))),
    h("td", { class: "num" }, dollars(r.usd_per_hour)),
    h("td", { class: "num" }, dollars(r.usd_per_month)),
  ];
  const body = $("#cost tbody");
  body.replaceChildren(...cost.rows.map((r) => h("tr", {}, ...line([
    h("td", {}, r.side), h("td", {}, r.name),
    h("td", {}, r.uptime === null ? "–" : age(r.uptime)),
  ], r))));
  if (!cost.rows.length) {
    body.replaceChildren(h("tr", {}, h("td", { colspan: 11, class: "empty" }, "Nothing counted yet.")));
  }
  $("#cost tfoot").replaceChildren(h("tr", {}, ...line([h("td", { colspan: 3 }, "Total")], cost.total)));
}

// -- actions -------------------------------------------------------------------------------

// Opens the dialog; resolves to the form's values, or null when cancelled.
function ask(title, text, fields) {
  const dialog = $("#dialog");
  $("#dialog-title").textContent = title;
  $("#dialog-text").textContent = text;
  $("#dialog-fields").replaceChildren(...fields);
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "ok") { resolve(null); return; }
      const values = {};
      for (const el of $("#dialog-fields").querySelectorAll("[name]")) values[el.name] = el.value;
      resolve(values);
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

function field(label, input) {
  return [h("label", { for: input.id }, label), input];
}

const ACTIONS = {
  "maintenance-on": async (names) => {
    const v = await ask("Maintenance on", `${names.join(", ")}: running tasks finish, no new ones start.`,
      field("Comment (stored with your name and the time)", h("textarea", { id: "f-comment", name: "comment", rows: 3, maxlength: 900 })));
    return v && ["maintenance", { on: true, comment: v.comment }, "maintenance on"];
  },
  "maintenance-off": async (names) => {
    const v = await ask("Maintenance off", `${names.join(", ")} take new tasks again.`, []);
    return v && ["maintenance", { on: false }, "maintenance off"];
  },
  shutdown: async (names) => {
    const v = await ask("Shut down", `${names.join(", ")} stop once their running tasks have finished. `
      + "Only their hosts can start them again.", []);
    return v && ["shutdown", {}, "shutdown"];
  },
  queues: async (names) => {
    const mode = h("select", { id: "f-mode", name: "mode" },
      h("option", { value: "set" }, "serve exactly these"), h("option", { value: "add" }, "also serve these"),
      h("option", { value: "remove" }, "stop serving these"));
    const list = h("input", { id: "f-queues", name: "queues", required: true, placeholder: "default, gpu" });
    const v = await ask("Queues", `${names.join(", ")}`, [...field("Change", mode), ...field("Queues (comma-separated)", list)]);
    if (!v) return null;
    const queues = v.queues.split(",").map((q) => q.trim()).filter(Boolean);
    return ["queues", { mode: v.mode, queues }, `queues ${v.mode} ${queues.join(",")}`];
  },
  concurrency: async (names) => {
    const input = h("input", { id: "f-slots", name: "concurrency", type: "number", min: 1, max: 1024, required: true });
    const v = await ask("Concurrency", `${names.join(", ")}`, field("Slots (tasks at once)", input));
    return v && ["concurrency", { concurrency: Number(v.concurrency) }, `concurrency ${v.concurrency}`];
  },
  forget: async (names) => {
    const v = await ask("Forget", `Remove the heartbeat and command of ${names.join(", ")}. `
      + "Refused for a worker that is alive.", []);
    return v && ["forget", {}, "forget"];
  },
};

async function act(name) {
  const names = [...state.selected].sort();
  if (!names.length) return;
  const chosen = await ACTIONS[name](names);
  if (!chosen) return;
  const [route, body, what] = chosen;
  try {
    const answer = await call("POST", `/api/bulk/${route}`, { workers: names, ...body });
    const failed = answer.results.filter((r) => !r.ok);
    for (const r of answer.results) {
      if (r.ok && r.command) state.pending.set(r.worker, { seq: r.command.seq, what, at: Date.now() / 1000 });
    }
    toast(`${what}: ${answer.succeeded} done${failed.length ? `, ${failed.length} refused:\n`
      + failed.map((r) => `${r.worker}: ${r.error}`).join("\n") : ""}`);
  } catch (error) {
    toast(`${what}: ${error.message}`);
  }
  load();
}

// -- wiring --------------------------------------------------------------------------------

function showTab(name) {
  for (const tab of document.querySelectorAll(".tabs button")) {
    tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
  }
  for (const panel of document.querySelectorAll(".tab")) panel.hidden = panel.id !== `tab-${name}`;
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
}

function start() {
  watchTheme();
  for (const tab of document.querySelectorAll(".tabs button")) {
    tab.addEventListener("click", () => showTab(tab.dataset.tab));
  }
  const fromHash = () => {
    const name = location.hash.slice(1);
    showTab(["workers", "queues", "jobs", "cost"].includes(name) ? name : "workers");
  };
  window.addEventListener("hashchange", fromHash);
  fromHash();
  for (const id of ["#w-search", "#w-queue", "#w-state"]) {
    $(id).addEventListener("input", () => state.fleet && renderWorkers(state.fleet));
  }
  for (const id of ["#j-search", "#j-state", "#j-queue", "#j-worker"]) {
    $(id).addEventListener("input", () => state.fleet && renderJobs(state.fleet));
  }
  $("#select-all").addEventListener("change", (e) => {
    for (const name of state.shown || []) {
      if (e.target.checked) state.selected.add(name); else state.selected.delete(name);
    }
    renderWorkers(state.fleet);
  });
  for (const button of document.querySelectorAll("#actions button")) {
    button.addEventListener("click", () => act(button.dataset.action));
  }
  $("#refresh").addEventListener("change", schedule);
  $("#reload").addEventListener("click", load);
  schedule();
  load();
}

document.addEventListener("DOMContentLoaded", start);
