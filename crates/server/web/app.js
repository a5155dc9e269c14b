// The operator dashboard: a plain ES module, no framework, no build step. It reads the
// operator API with the session cookie, re-reads what it shows when the live feed
// (/api/v1/events, server-sent events) says something changed, and renders text with
// textContent only (never innerHTML), so nothing an agent sends can run as markup.

const $ = (selector) => document.querySelector(selector);
const ROLES = { viewer: 0, operator: 1, admin: 2 };
const STEPS = ["offered", "downloading", "verified", "handed_over", "healthy"];
const ENDS = ["refused", "failed", "rolled_back"];
const PAGE = 50;

let me = null;
let feed = null;
let searchTimer = null;
let liveTimer = null;
const list = { q: "", group: "", sort: "hostname", order: "asc", offset: 0 };

// h("td", {class: "x"}, "text", child...) builds an element; strings become text nodes.
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CMS-CSRF"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && path !== "/api/v1/session") { signedOut(); }
  if (!response.ok) {
    const text = await response.json().then((j) => j.error).catch(() => response.statusText);
    throw new HttpError(response.status, text);
  }
  return response.status === 204 ? null : response.json();
}

const canAct = () => me && ROLES[me.role] >= ROLES.operator;
const ago = (at) => {
  const secs = Math.max(0, Math.round((Date.now() - Date.parse(at)) / 1000));
  if (secs < 90) return `${secs} s ago`;
  if (secs < 5400) return `${Math.round(secs / 60)} min ago`;
  if (secs < 129600) return `${Math.round(secs / 3600)} h ago`;
  return `${Math.round(secs / 86400)} d ago`;
};
const bytes = (n) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${Math.round(n / 1024)} KB`);

function table(headers, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, headers.map((c) => (c instanceof Node ? c : h("th", {}, c))))),
    h("tbody", {}, rows));
}

function onlineBadge(online, revokedAt) {
  if (revokedAt) return h("span", { class: "badge revoked", title: `revoked ${revokedAt}` }, "revoked");
  return h("span", { class: `badge ${online ? "on" : "off"}` }, online ? "online" : "offline");
}

// ---- views ---------------------------------------------------------------------------------

async function fleetView() {
  const counts = await api("GET", "/api/v1/fleet");
  const card = (cls, label, n) => h("div", { class: `card ${cls}`, "data-count": cls },
    h("div", { class: "n" }, n), h("div", { class: "muted" }, label));
  const tally = (title, rows) => h("div", {}, h("h3", {}, title),
    table(["", "agents"], rows.map(([name, n]) => h("tr", {}, h("td", {}, name), h("td", {}, n)))));
  const search = h("input", {
    id: "search", type: "search", placeholder: "hostname or agent id", value: list.q,
    oninput: (e) => { list.q = e.target.value; list.offset = 0; debounce(loadAgentList, 250); },
  });
  const groupFilter = h("input", {
    id: "group-filter", type: "search", placeholder: "group", value: list.group,
    oninput: (e) => { list.group = e.target.value; list.offset = 0; debounce(loadAgentList, 250); },
  });
  return [
    h("h2", {}, "Fleet"),
    h("div", { class: "cards" },
      card("total", "agents", counts.total), card("online", "online", counts.online),
      card("offline", "offline", counts.offline), card("missing", "missing (7 days)", counts.missing),
      card("revoked", "revoked (not counted)", counts.revoked)),
    h("div", { class: "tallies" },
      tally("By state", counts.by_state), tally("By version", counts.by_version),
      tally("By platform", counts.by_platform)),
    h("h3", {}, "Agents"),
    h("div", { class: "toolbar" }, search, groupFilter, h("span", { id: "agent-total", class: "muted" })),
    h("div", { id: "agent-list" }),
  ];
}

async function loadAgentList() {
  const target = $("#agent-list");
  if (!target) return;
  const query = new URLSearchParams({
    q: list.q, group: list.group, sort: list.sort, order: list.order, offset: list.offset, limit: PAGE,
  });
  const page = await api("GET", `/api/v1/fleet/agents?${query}`);
  const sortable = (column, label) => h("th", {
    class: "sortable", "data-sort": column,
    onclick: () => {
      list.order = list.sort === column && list.order === "asc" ? "desc" : "asc";
      list.sort = column; list.offset = 0; loadAgentList();
    },
  }, label + (list.sort === column ? (list.order === "asc" ? " ▲" : " ▼") : ""));
  const rows = page.items.map((a) => h("tr", { "data-agent": a.agent_id },
    h("td", {}, h("a", { href: `#/agent/${encodeURIComponent(a.agent_id)}` }, a.hostname)),
    h("td", { class: "muted" }, a.agent_id), h("td", {}, a.group), h("td", {}, a.platform), h("td", {}, a.version),
    h("td", {}, a.state), h("td", {}, onlineBadge(a.online, a.revoked_at)), h("td", {}, ago(a.last_seen))));
  const last = Math.min(page.offset + page.items.length, page.total);
  $("#agent-total").textContent = `${page.total ? page.offset + 1 : 0}–${last} of ${page.total}`;
  target.replaceChildren(
    table([sortable("hostname", "Hostname"), "Agent id", "Group", sortable("platform", "Platform"),
      sortable("version", "Version"), sortable("state", "State"), "Online",
      sortable("last_seen", "Last seen")], rows, { id: "agents" }),
    h("div", { class: "toolbar" },
      h("button", { type: "button", disabled: page.offset === 0 || undefined,
        onclick: () => { list.offset = Math.max(0, list.offset - PAGE); loadAgentList(); } }, "‹ Previous"),
      h("button", { type: "button", disabled: last >= page.total || undefined,
        onclick: () => { list.offset += PAGE; loadAgentList(); } }, "Next ›")));
}

async function agentView(agentId) {
  const page = await api("GET", `/api/v1/fleet/agents/${encodeURIComponent(agentId)}`);
  const a = page.agent;
  const m = page.metrics || {};
  const kv = (pairs) => table(["", ""], pairs.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))));
  const credentialAt = a.credential_at || a.registered_at;
  return [
    h("h2", {}, `Agent ${a.hostname}`),
    revokeAction(a),
    kv([["Agent id", a.agent_id], ["Hostname", a.hostname], ["Group", a.group], ["Platform", a.platform],
      ["Version", a.version], ["State", a.state], ["Online", onlineBadge(page.online, a.revoked_at)],
      ["Last heartbeat", `${a.last_seen} (${ago(a.last_seen)})`], ["Registered", a.registered_at],
      ["Enrollment token", a.enrolled_by ?? "none"],
      ["Credential age", h("span", { "data-field": "credential-age" }, ago(credentialAt))]]),
    h("h3", {}, "Last heartbeat's metrics"),
    page.metrics ? kv([["Memory (RSS)", bytes(m.rss_bytes)], ["CPU", `${m.cpu_percent.toFixed(2)} %`],
      ["Uptime", `${m.uptime_secs} s`], ["Buffered error reports", m.buffered_errors]])
      : h("p", { class: "muted" }, "no heartbeat yet"),
    h("h3", {}, "Version history"),
    table(["Version", "First seen"], page.versions.map((v) =>
      h("tr", {}, h("td", {}, v.version), h("td", {}, v.first_seen)))),
    h("h3", {}, "Update attempts"),
    table(["Version", "Step", "Failed step", "Detail", "At", "Counted"], page.updates.map((u) =>
      h("tr", {}, h("td", {}, u.version), h("td", {}, u.step), h("td", {}, u.failed_step ?? ""),
        h("td", {}, u.detail ?? ""), h("td", {}, u.created_at),
        h("td", {}, u.verified ? "yes" : "unverified: never offered"))), { id: "agent-updates" }),
    h("h3", {}, "Error reports"),
    table(["Kind", "Message", "At"], page.errors.map((e) =>
      h("tr", {}, h("td", {}, e.kind), h("td", {}, e.message), h("td", {}, e.created_at)))),
  ];
}

async function groupsView() {
  const groups = await api("GET", "/api/v1/groups");
  const move = h("form", { id: "set-group", hidden: !canAct() || undefined,
    onsubmit: async (e) => {
      e.preventDefault();
      const form = new FormData(e.target);
      try {
        await api("PUT", `/api/v1/agents/${encodeURIComponent(form.get("agent_id"))}/group`,
          { group: form.get("group") });
        refresh();
      } catch (error) { showError(error); }
    } },
    h("input", { name: "agent_id", placeholder: "agent id", required: true }),
    h("input", { name: "group", placeholder: "group", required: true, pattern: "[A-Za-z0-9._\\-]{1,64}" }),
    h("button", { type: "submit" }, "Move agent"));
  return [
    h("h2", {}, "Groups"),
    h("p", { class: "muted" }, "Every agent is in one group (default: default). An operator's assignment wins over the agent's --group."),
    table(["Group", "Agents"], groups.map((g) => h("tr", { "data-group": g.group },
      h("td", {}, h("a", { href: "#/fleet", onclick: () => { list.group = g.group; list.offset = 0; } }, g.group)),
      h("td", {}, g.agents))), { id: "groups" }),
    move,
  ];
}

async function errorsView() {
  const groups = await api("GET", "/api/v1/error-groups");
  return [
    h("h2", {}, "Errors"),
    h("p", { class: "muted" }, "Reports grouped by kind and message, with ids, hex strings and numbers stripped."),
    table(["Kind", "Message signature", "Reports", "Agents", "First seen", "Last seen"],
      groups.map((g) => h("tr", {}, h("td", {}, g.kind), h("td", {}, g.signature),
        h("td", {}, g.count), h("td", {}, g.agents), h("td", {}, g.first_seen),
        h("td", {}, g.last_seen))), { id: "error-groups" }),
  ];
}

function funnelView(f) {
  const step = (name, n, cls = "") => h("div", { class: `step ${cls}`, "data-step": name },
    h("b", {}, n), name.replace("_", " "));
  const failedBy = Object.entries(f.failed_by_step).map(([s, n]) => `${s}: ${n}`).join(", ");
  return h("div", { class: "funnel" },
    STEPS.map((s) => step(s, f[s], s === "healthy" ? "healthy" : "")),
    ENDS.map((s) => step(s, f[s], f[s] > 0 ? "bad" : "")),
    failedBy ? h("div", { class: "step muted" }, `failed at ${failedBy}`) : null);
}

// Revokes the agent (operator): its credential is refused at once, on every replica.
function revokeAction(a) {
  if (!canAct() || a.revoked_at) return null;
  const revoke = () => {
    if (!confirm(`Revoke ${a.hostname}? It stops working at once and does not enrol again by itself.`)) return;
    api("DELETE", `/api/v1/agents/${encodeURIComponent(a.agent_id)}`).then(refresh).catch((e) => alert(e.message));
  };
  return h("div", { class: "toolbar" },
    h("button", { type: "button", class: "danger", "data-action": "revoke", onclick: revoke }, "Revoke"));
}

function rolloutActions(r) {
  if (!canAct()) return null;
  const path = `/api/v1/rollouts/${encodeURIComponent(r.platform)}/${encodeURIComponent(r.version)}`;
  const act = (body) => api("POST", path, body).then(refresh).catch((e) => alert(e.message));
  const percent = h("input", { type: "number", min: 0, max: 100, value: r.rollout_percent,
    "aria-label": "rollout percent", "data-input": "percent" });
  return h("div", { class: "toolbar" },
    percent, h("button", { type: "button", "data-action": "set",
      onclick: () => act({ action: "set", percent: Number(percent.value) }) }, "Set rollout %"),
    r.paused
      ? h("button", { type: "button", "data-action": "resume", onclick: () => act({ action: "resume" }) }, "Resume")
      : h("button", { type: "button", class: "danger", "data-action": "pause",
        onclick: () => act({ action: "pause" }) }, "Pause"));
}

async function releasesView() {
  const rollouts = await api("GET", "/api/v1/rollouts");
  const badge = (r) => (r.halted_at
    ? h("span", { class: "badge halted" }, `halted ${r.halted_at}`)
    : r.paused ? h("span", { class: "badge off" }, "paused") : h("span", { class: "badge on" }, "rolling out"));
  return [
    h("h2", {}, "Releases and rollouts"),
    rollouts.length ? null : h("p", { class: "muted" }, "No release published yet."),
    rollouts.map((r) => h("div", { class: "release", "data-release": `${r.version}/${r.platform}` },
      h("h3", {}, `${r.version} · ${r.platform} `, badge(r)),
      h("div", { class: "muted" }, `published ${r.published_at} · rollout ${r.rollout_percent} % · `
        + `halts above ${r.halt.percent} % failures of at least ${r.halt.min_attempts} attempts`),
      funnelView(r.funnel), rolloutActions(r))),
  ];
}

async function banners() {
  const rollouts = await api("GET", "/api/v1/rollouts?halted=true").catch(() => []);
  $("#banners").replaceChildren(...rollouts.filter((r) => r.halted_at).map((r) =>
    h("div", { class: "banner", role: "alert", "data-banner": `${r.version}/${r.platform}` },
      `Rollout of ${r.version} (${r.platform}) halted itself at ${r.halted_at}: `
      + `${r.funnel.failed + r.funnel.rolled_back} of ${r.funnel.offered} attempts failed or rolled back.`)));
}

// ---- routing, live feed, sign-in -------------------------------------------------------------

// Runs fn once typing has paused for ms.
function debounce(fn, ms) {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => fn().catch(showError), ms);
}

// Re-reads the view at most every LIVE_MS however many events arrive (a busy fleet sends
// many), so a steady stream still refreshes the page.
const LIVE_MS = 500;
function scheduleRefresh() {
  if (liveTimer) return;
  liveTimer = setTimeout(() => { liveTimer = null; refresh().catch(showError); }, LIVE_MS);
}

function showError(error) {
  if (error.status === 401) return;
  $("#view").replaceChildren(h("p", { class: "error", role: "alert" }, error.message));
}

const VIEWS = { fleet: fleetView, groups: groupsView, errors: errorsView, releases: releasesView, agent: agentView };

async function refresh() {
  if (!me) return;
  const [asked, arg] = (location.hash.replace(/^#\//, "") || "fleet").split("/");
  const view = asked in VIEWS ? asked : "fleet";
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.view === view);
  }
  const searching = document.activeElement && document.activeElement.id === "search";
  const content = await VIEWS[view](decodeURIComponent(arg || ""));
  $("#view").replaceChildren(...[content].flat(2).filter(Boolean));
  $("#view").dataset.view = view;
  if (view === "fleet") {
    await loadAgentList();
    if (searching) { const input = $("#search"); input.focus(); input.setSelectionRange(9999, 9999); }
  }
  await banners();
}

function openFeed() {
  feed = new EventSource("/api/v1/events");
  feed.onopen = () => $("#live").classList.remove("off");
  feed.onerror = () => $("#live").classList.add("off");
  const names = ["agent_registered", "agent_changed", "update_progress", "rollout_changed",
    "errors_reported", "lagged"];
  for (const name of names) feed.addEventListener(name, scheduleRefresh);
}

function signedIn(who) {
  me = who;
  $("#sign-in").hidden = true;
  $("#nav").hidden = false;
  $("#sign-out").hidden = false;
  $("#who").textContent = `${who.name} (${who.role})`;
  document.body.dataset.role = who.role;
  if (!feed) openFeed();
  refresh().catch(showError);
}

function signedOut() {
  me = null;
  if (feed) { feed.close(); feed = null; }
  $("#live").classList.add("off");
  $("#nav").hidden = true;
  $("#sign-out").hidden = true;
  $("#who").textContent = "";
  $("#banners").replaceChildren();
  $("#view").replaceChildren();
  $("#sign-in").hidden = false;
}

$("#sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("#sign-in-error").textContent = "";
  try {
    const who = await api("POST", "/api/v1/session", { token: $("#token").value });
    $("#token").value = "";
    signedIn(who);
  } catch (error) {
    $("#sign-in-error").textContent = error.status === 401 ? "That is not a valid operator token." : error.message;
  }
});
$("#sign-out").addEventListener("click", async () => {
  await api("DELETE", "/api/v1/session").catch(() => null);
  signedOut();
});
window.addEventListener("hashchange", () => refresh().catch(showError));
api("GET", "/api/v1/session").then(signedIn).catch(signedOut);
