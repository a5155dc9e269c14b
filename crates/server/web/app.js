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
let heldRefresh = false;
const list = { q: "", group: "", release: "", platform: "", step: "", sort: "hostname", order: "asc", offset: 0 };

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

async function request(method, path, body) {
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
  return response;
}

async function api(method, path, body) {
  const response = await request(method, path, body);
  return response.status === 204 ? null : response.json();
}

// One page of a listing and the path of the next (from its Link header), if any.
async function apiPage(path) {
  const response = await request("GET", path);
  const next = (response.headers.get("Link") || "").match(/^<([^>]+)>; rel="next"$/);
  return { items: await response.json(), next: next ? next[1] : null };
}

const canAct = () => me && ROLES[me.role] >= ROLES.operator;
const ago = (at) => {
  const diff = Math.round((Date.now() - Date.parse(at)) / 1000);
  const secs = Math.abs(diff);
  let text = `${Math.round(secs / 86400)} d`;
  if (secs < 90) text = `${secs} s`;
  else if (secs < 5400) text = `${Math.round(secs / 60)} min`;
  else if (secs < 129600) text = `${Math.round(secs / 3600)} h`;
  return diff >= 0 ? `${text} ago` : `in ${text}`;
};
// A time as "3 min ago", the exact time on hover.
const when = (at) => (at ? h("time", { datetime: at, title: at }, ago(at)) : "");
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
  const card = (cls, label, n) => h("div", { class: `card ${cls}${n === 0 ? " none" : ""}`, "data-count": cls },
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
  const shed = counts.shed;
  const shedNotice = shed ? [h("p", { id: "database-shed", class: "shed" },
    `Database over its size limit (${bytes(shed.limit_bytes)}): the oldest ${shed.reports} error reports `
    + `and ${shed.events} update events were shed `, when(shed.shed_at), " "
    + `(${bytes(shed.bytes_before)} → ${bytes(shed.bytes_after)}).`)] : [];
  const releaseFilter = list.release ? h("div", { class: "toolbar", id: "release-filter" },
    h("span", {}, `Agents that reported ${list.release} (${list.platform})`
      + (list.step ? `, step ${list.step.replace("_", " ")}` : "")),
    h("button", { type: "button", onclick: () => { clearReleaseFilter(); refresh().catch(showError); } },
      "Show all agents")) : null;
  return [
    h("h2", {}, "Fleet"),
    ...shedNotice,
    h("div", { class: "cards" },
      card("total", "agents", counts.total), card("online", "online", counts.online),
      card("offline", "offline", counts.offline), card("missing", "missing (7 days)", counts.missing),
      card("revoked", "revoked (not counted)", counts.revoked)),
    h("div", { class: "tallies" },
      tally("By state", counts.by_state), tally("By version", counts.by_version),
      tally("By platform", counts.by_platform)),
    h("h3", {}, "Agents"),
    h("div", { class: "toolbar" }, search, groupFilter, h("span", { id: "agent-total", class: "muted" })),
    releaseFilter,
    h("div", { id: "agent-list" }),
  ];
}

async function loadAgentList() {
  const target = $("#agent-list");
  if (!target) return;
  const query = new URLSearchParams({
    q: list.q, group: list.group, release: list.release, platform: list.platform, step: list.step,
    sort: list.sort, order: list.order, offset: list.offset, limit: PAGE,
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
    h("td", {}, a.state), h("td", {}, onlineBadge(a.online, a.revoked_at)), h("td", {}, when(a.last_seen)),
    list.release ? h("td", { "data-field": "update-step" }, a.update ? a.update.step.replace("_", " ") : "") : null,
    list.release ? h("td", { "data-field": "reason" }, a.update ? reasonText(a.update) : "") : null));
  const last = Math.min(page.offset + page.items.length, page.total);
  $("#agent-total").textContent = `${page.total ? page.offset + 1 : 0}–${last} of ${page.total}`;
  target.replaceChildren(
    table([sortable("hostname", "Hostname"), "Agent id", "Group", sortable("platform", "Platform"),
      sortable("version", "Version"), sortable("state", "State"), "Online",
      sortable("last_seen", "Last seen"), ...(list.release ? ["Latest step", "Reason"] : [])], rows, { id: "agents" }),
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
  const kv = (pairs) => h("table", { class: "kv" },
    h("tbody", {}, pairs.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))));
  const credentialAt = a.credential_at || a.registered_at;
  return [
    h("h2", {}, `Agent ${a.hostname}`),
    revokeAction(a),
    kv([["Agent id", a.agent_id], ["Hostname", a.hostname], ["Group", a.group], ["Platform", a.platform],
      ["Version", a.version], ["State", a.state], ["Online", onlineBadge(page.online, a.revoked_at)],
      ["Last contact", when(a.last_seen)], ["Registered", when(a.registered_at)],
      ["Enrollment token", a.enrolled_by ?? "none"],
      ["Credential age", h("span", { "data-field": "credential-age" }, ago(credentialAt))]]),
    h("h3", {}, "Metrics", m.reported_at ? [" as of ", h("span", { "data-field": "metrics-at" }, when(m.reported_at))] : null),
    page.metrics ? kv([["Memory (RSS)", bytes(m.rss_bytes)], ["CPU", `${m.cpu_percent.toFixed(2)} %`],
      ["Uptime", `${m.uptime_secs} s`], ["Buffered error reports", m.buffered_errors]])
      : h("p", { class: "muted" }, "no heartbeat yet"),
    h("h3", {}, "Version history"),
    table(["Version", "First seen"], page.versions.map((v) =>
      h("tr", {}, h("td", {}, v.version), h("td", {}, when(v.first_seen))))),
    h("h3", {}, "Update attempts"),
    h("div", { id: "agent-updates" }, attempts(page.updates)),
    h("h3", {}, "Error reports"),
    table(["Kind", "Message", "At"], page.errors.map((e) =>
      h("tr", {}, h("td", {}, e.kind), h("td", {}, e.message), h("td", {}, when(e.created_at))))),
  ];
}

// What an agent said about a failed or rolled back update.
function reasonText(u) {
  if (u.step === "failed") return `failed at ${u.failed_step ?? "?"}${u.detail ? `: ${u.detail}` : ""}`;
  return u.detail ?? "";
}

const seconds = (ms) => (ms < 10000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`);

// An agent's update reports grouped into one attempt per version, newest attempt first, each
// attempt's steps in time order with the time since the step before, its reason on top.
function attempts(updates) {
  if (!updates.length) return h("p", { class: "muted" }, "no update attempted");
  const byVersion = new Map();
  for (const u of updates) {
    if (!byVersion.has(u.version)) byVersion.set(u.version, []);
    byVersion.get(u.version).push(u);
  }
  return [...byVersion.entries()].map(([version, steps]) => {
    steps.sort((a, b) => Date.parse(a.created_at) - Date.parse(b.created_at));
    const last = steps[steps.length - 1];
    const ended = ["healthy", "failed", "rolled_back", "refused"].includes(last.step);
    const reason = steps.filter((u) => u.step === "failed" || u.step === "rolled_back").map(reasonText).join("; ");
    return h("div", { class: "attempt", "data-attempt": version },
      h("h4", {}, `${version}: ${ended ? last.step.replace("_", " ") : `in progress (${last.step.replace("_", " ")})`} `,
        h("span", { class: "muted" }, when(steps[0].created_at))),
      reason ? h("p", { class: "bad", "data-field": "attempt-reason" }, reason) : null,
      table(["Step", "At", "After", "Counted"], steps.map((u, i) => h("tr", {},
        h("td", {}, u.step.replace("_", " ")), h("td", {}, when(u.created_at)),
        h("td", {}, i ? `+${seconds(Date.parse(u.created_at) - Date.parse(steps[i - 1].created_at))}` : ""),
        h("td", {}, u.verified ? "yes" : "unverified: never offered")))));
  });
}

// A group name field, with the server's rule for names.
const groupInput = () => h("input", { name: "group", placeholder: "group", required: true, pattern: "[A-Za-z0-9._\\-]{1,64}" });

// One group's progress in each release that concerns it (offered to its agents, or with its
// own settings), from the rollouts' group funnels.
function groupProgress(group, rollouts) {
  const parts = rollouts.flatMap((r) => (r.groups ?? []).filter((g) => g.group === group).map((g) => {
    const f = g.funnel;
    const failed = f.failed + f.rolled_back;
    return h("div", { "data-group-release": `${r.version}/${r.platform}` },
      `${r.version} · ${r.platform}: ${f.healthy} healthy of ${f.offered} offered · in flight ${g.in_flight}`
      + (g.max_in_flight ? ` of at most ${g.max_in_flight}` : ""),
      failed ? h("span", { class: "bad" }, ` · ${failed} failed or rolled back`) : null,
      g.stuck ? h("span", { class: "bad" }, ` · ${g.stuck} stuck`) : null);
  }));
  return parts.length ? parts : "none";
}

async function groupsView() {
  const [groups, rollouts] = await Promise.all([api("GET", "/api/v1/groups"), api("GET", "/api/v1/rollouts")]);
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
    groupInput(),
    h("button", { type: "submit" }, "Move agent"));
  const setWindow = h("form", { id: "set-window", hidden: !canAct() || undefined,
    onsubmit: async (e) => {
      e.preventDefault();
      const form = new FormData(e.target);
      const path = `/api/v1/groups/${encodeURIComponent(form.get("group"))}/window`;
      const windows = form.get("windows").split(";").map((w) => w.trim()).filter((w) => w);
      try {
        if (windows.length) {
          await api("PUT", path, { windows, timezone: form.get("timezone") });
        } else {
          await api("DELETE", path);
        }
        refresh();
      } catch (error) { showError(error); }
    } },
    groupInput(),
    h("input", { name: "windows", placeholder: "Mon-Fri 22:00-05:00; Sat 00:00-24:00 (empty: clear)" }),
    h("select", { name: "timezone" }, h("option", { value: "utc" }, "UTC"),
      h("option", { value: "agent" }, "agent's clock")),
    h("button", { type: "submit" }, "Set window"));
  const pinText = (pins) => (pins ?? []).map((p) => `${p.version} (${p.platform}${p.rollback ? ", rollback" : ""})`).join("; ") || "no pin";
  const windowText = (w) => w ? `${w.windows.join("; ")} (${w.clock === "agent" ? "agent's clock" : "UTC"})` : "any time";
  return [
    h("h2", {}, "Groups"),
    h("p", { class: "muted" }, "Every agent is in one group (default: default). An operator's assignment wins over the agent's --group. Outside its maintenance window a group's agents are offered no update."),
    table(["Group", "Agents", "Maintenance window", "Pinned to", "Releases"], groups.map((g) => h("tr", { "data-group": g.group },
      h("td", {}, h("a", { href: "#/fleet", onclick: () => { list.group = g.group; list.offset = 0; } }, g.group)),
      h("td", {}, g.agents), h("td", { class: "window" }, windowText(g.window)),
      h("td", { class: "pin" }, pinText(g.pins)),
      h("td", { class: "progress" }, groupProgress(g.group, rollouts)))), { id: "groups" }),
    move,
    setWindow,
  ];
}

async function errorsView() {
  const groups = await api("GET", "/api/v1/error-groups");
  return [
    h("h2", {}, "Errors"),
    h("p", { class: "muted" }, "Reports grouped by kind and message, with ids, hex strings and numbers stripped (release versions are kept, so two releases never share a group)."),
    table(["Kind", "Message signature", "Reports", "Agents", "First seen", "Last seen"],
      groups.map((g) => h("tr", {}, h("td", {}, g.kind), h("td", {}, g.signature),
        h("td", {}, g.count), h("td", {}, g.agents), h("td", {}, when(g.first_seen)),
        h("td", {}, when(g.last_seen)))), { id: "error-groups" }),
  ];
}

// The agent list of the release `r`'s agents that reached `step` (of `group`, when given).
function showAgentsOf(r, step, group = "") {
  Object.assign(list, { release: r.version, platform: r.platform, step, group, q: "", offset: 0 });
  if (location.hash === "#/fleet") refresh().catch(showError);
  else location.hash = "#/fleet";
}

function clearReleaseFilter() {
  Object.assign(list, { release: "", platform: "", step: "", offset: 0 });
}

// A release's funnel; each number links to the agents that reached that step.
function funnelView(f, r, group = "") {
  const step = (name, n, cls = "") => h("a", { class: `step ${cls}`, "data-step": name, href: "#/fleet",
    title: `the agents that reported ${name.replace("_", " ")}`,
    onclick: (e) => { e.preventDefault(); showAgentsOf(r, name, group); } },
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

// The release whose resume form is open ("version/platform"), kept across live re-reads: a
// halted release resumes only after the operator has seen why it halted and given a reason.
let resuming = null;

function openResume(key) {
  resuming = key;
  refresh().then(() => $(`[data-resume-form="${CSS.escape(key)}"] textarea`)?.focus()).catch(showError);
}

// Asks for the reason to resume a halted release (kept in its halt history and the audit log),
// beside what made it halt; the release's top failure reasons are listed on its card.
function resumeForm(r, act) {
  const f = r.funnel;
  const close = () => { resuming = null; refresh().catch(showError); };
  return h("form", { class: "resume", "data-resume-form": `${r.version}/${r.platform}`,
    onsubmit: (e) => {
      e.preventDefault();
      const reason = String(new FormData(e.target).get("reason") ?? "").trim();
      if (!reason) return;
      resuming = null;
      act({ action: "resume", reason });
    } },
    h("p", {}, h("b", {}, `Resume ${r.version} (${r.platform})? `), "It halted itself ", when(r.halted_at),
      `: ${f.failed} failed and ${f.rolled_back} rolled back of ${f.offered} attempts. Resuming offers it again `
      + "to the agents its rollout includes; the top failure reasons are listed above."),
    h("textarea", { name: "reason", required: true, rows: 2, "aria-label": "reason for resuming",
      placeholder: "Why is it safe to resume? (kept in the release's halt history and the audit log)" }),
    h("div", { class: "toolbar" },
      h("button", { type: "submit", class: "danger", "data-action": "confirm-resume" }, "Resume with this reason"),
      h("button", { type: "button", "data-action": "cancel-resume", onclick: close }, "Cancel")));
}

function rolloutActions(r) {
  if (!canAct()) return null;
  const path = `/api/v1/rollouts/${encodeURIComponent(r.platform)}/${encodeURIComponent(r.version)}`;
  const act = (body) => api("POST", path, body).then(refresh).catch((e) => alert(e.message));
  if (r.halted_at && resuming === `${r.version}/${r.platform}`) return resumeForm(r, act);
  const percent = h("input", { type: "number", min: 0, max: 100, value: r.rollout_percent,
    "aria-label": "rollout percent", "data-input": "percent" });
  const haltPercent = h("input", { type: "number", min: 0, max: 100, value: r.halt.percent,
    "aria-label": "halt above this percent of failures", "data-input": "halt-percent" });
  const haltMin = h("input", { type: "number", min: 0, value: r.halt.min_attempts,
    "aria-label": "halt only after this many attempts", "data-input": "halt-min-attempts" });
  return h("div", { class: "toolbar" },
    percent, h("button", { type: "button", "data-action": "set",
      onclick: () => act({ action: "set", percent: Number(percent.value) }) }, "Set rollout %"),
    haltPercent, haltMin, h("button", { type: "button", "data-action": "set-halt",
      onclick: () => act({ action: "set", halt_percent: Number(haltPercent.value),
        halt_min_attempts: Number(haltMin.value) }) }, "Set halt rule"),
    r.paused
      ? h("button", { type: "button", "data-action": "resume", onclick: () => (r.halted_at ? openResume(`${r.version}/${r.platform}`) : act({ action: "resume" })) }, "Resume")
      : h("button", { type: "button", class: "danger", "data-action": "pause",
        onclick: () => act({ action: "pause" }) }, "Pause"));
}

// Sets a group's own percentage and in-flight cap for the release (operator; empty: unchanged).
function groupRolloutForm(r) {
  if (!canAct()) return null;
  const number = (form, name) => (form.get(name) === "" ? undefined : Number(form.get(name)));
  return h("form", { class: "toolbar", "data-group-rollout": `${r.version}/${r.platform}`,
    onsubmit: async (e) => {
      e.preventDefault();
      const form = new FormData(e.target);
      const path = `/api/v1/rollouts/${encodeURIComponent(r.platform)}/${encodeURIComponent(r.version)}`
        + `/groups/${encodeURIComponent(form.get("group"))}`;
      try {
        await api("PUT", path, { percent: number(form, "percent"), max_in_flight: number(form, "max_in_flight") });
        refresh();
      } catch (error) { alert(error.message); }
    } },
    groupInput(),
    h("input", { name: "percent", type: "number", min: 0, max: 100, placeholder: "group %" }),
    h("input", { name: "max_in_flight", type: "number", min: 0, placeholder: "max in flight (0: none)" }),
    h("button", { type: "submit" }, "Set for group"));
}

// A staged release's plan: its stages, the current one, and when the next may start.
function planView(r) {
  const p = r.plan;
  if (!p) return null;
  const stages = p.stages.map((stage, i) => h("span", { class: i + 1 === p.stage ? "stage current" : "stage" }, stage));
  const next = p.done ? "last stage reached"
    : p.next_advance_at ? ["next stage ", when(p.next_advance_at)]
      : `next stage once this one is healthy for ${Math.round(p.soak_secs / 60)} min`;
  return h("div", { class: "plan", "data-plan-stage": p.stage },
    "stages ", stages, ` · stage ${p.stage} of ${p.stages.length} since `, when(p.stage_started_at), " · ", next,
    p.canary_group ? ` · canary group ${p.canary_group}` : "");
}

// The release's halts, each with how it ended.
function haltHistory(r) {
  if (!(r.halts ?? []).length) return null;
  return h("div", { class: "halts", "data-halts": r.halts.length },
    h("h4", {}, "Halts"),
    h("ul", {}, r.halts.map((x) => h("li", {}, "halted ", when(x.halted_at), `: ${x.why}`,
      x.resumed_at ? [" · resumed ", when(x.resumed_at), ` by ${x.resumed_by}: ${x.reason ?? ""}`] : " · still halted"))));
}

// Fills each failing release's box with the reasons its agents gave most.
async function loadReasons(rollouts) {
  for (const r of rollouts.filter((r) => r.funnel.failed + r.funnel.rolled_back > 0)) {
    const path = `/api/v1/rollouts/${encodeURIComponent(r.platform)}/${encodeURIComponent(r.version)}/reasons`;
    const reasons = await api("GET", path);
    const box = document.querySelector(`[data-reasons="${CSS.escape(`${r.version}/${r.platform}`)}"]`);
    if (!box || !reasons.length) continue;
    box.replaceChildren(h("h4", {}, "Top failure reasons"), h("ul", {}, reasons.map((reason) =>
      h("li", {}, h("a", { href: "#/fleet", onclick: (e) => { e.preventDefault(); showAgentsOf(r, reason.step); } },
        `${reason.agents} agent${reason.agents === 1 ? "" : "s"}`), `: ${reasonText(reason)}`))));
  }
}

async function releasesView() {
  const rollouts = await api("GET", "/api/v1/rollouts");
  setTimeout(() => loadReasons(rollouts).catch(showError), 0);
  const state = (r) => {
    if (r.halted_at) return h("span", { class: "badge halted" }, "halted ", when(r.halted_at));
    if (r.superseded) return null;
    if (r.paused) return h("span", { class: "badge off" }, "paused");
    return h("span", { class: "badge on" }, r.plan && r.plan.done === false ? "staged rollout" : "rolling out");
  };
  const badge = (r) => [state(r), r.superseded
    ? h("span", { class: "badge", "data-badge": "superseded" }, "superseded: offered to nobody") : null];
  return [
    h("h2", {}, "Releases and rollouts"),
    rollouts.length ? null : h("p", { class: "muted" }, "No release published yet."),
    rollouts.map((r) => h("div", { class: "release", "data-release": `${r.version}/${r.platform}` },
      h("h3", {}, `${r.version} · ${r.platform} `, badge(r)),
      h("div", { class: "muted" }, "published ", when(r.published_at), ` · rollout ${r.rollout_percent} % · `
        + `halts above ${r.halt.percent} % failures of at least ${r.halt.min_attempts} attempts`),
      h("div", { class: "muted", "data-in-flight": r.in_flight },
        `in flight ${r.in_flight}${r.max_in_flight ? ` of at most ${r.max_in_flight}` : ""} · `,
        h("span", { class: r.stuck > 0 ? "bad" : "", "data-stuck": r.stuck },
          `stuck ${r.stuck} (no end step after ${Math.round(r.stuck_after_secs / 60)} min)`)),
      planView(r),
      funnelView(r.funnel, r),
      h("div", { class: "muted", "data-attempts": r.funnel.attempts },
        `${r.funnel.attempts} attempts, each counted once by how it ended: `
        + `${r.funnel.ends.healthy} healthy, ${r.funnel.ends.failed} failed, ${r.funnel.ends.rolled_back} rolled back, `
        + `${r.funnel.ends.refused} refused without trying, ${r.funnel.ends.deferred} deferred (metered), ${r.funnel.ends.in_progress} in progress. `
        + "The boxes above count the agents that reached each step."),
      haltHistory(r),
      h("div", { class: "reasons", "data-reasons": `${r.version}/${r.platform}` }),
      (r.groups ?? []).map((g) => h("div", { class: "group-funnel", "data-group-funnel": g.group },
        h("h4", {}, `group ${g.group}`, g.halt
          ? h("span", { class: "muted" }, ` · halts the release above ${g.halt.percent} % failures of at least ${g.halt.min_attempts} attempts`)
          : null),
        h("div", { class: "muted", "data-group-in-flight": g.in_flight },
          `in flight ${g.in_flight}${g.max_in_flight ? ` of at most ${g.max_in_flight}` : ""} · stuck ${g.stuck}`),
        funnelView(g.funnel, r, g.group))),
      rolloutActions(r),
      groupRolloutForm(r))),
  ];
}

async function banners() {
  const rollouts = await api("GET", "/api/v1/rollouts?halted=true").catch(() => []);
  $("#banners").replaceChildren(...rollouts.filter((r) => r.halted_at).map((r) =>
    h("div", { class: "banner", role: "alert", "data-banner": `${r.version}/${r.platform}` },
      `Rollout of ${r.version} (${r.platform}) halted itself `, when(r.halted_at), ": ",
      bannerLink(r, "failed", `${r.funnel.failed} failed`), ", ",
      bannerLink(r, "rolled_back", `${r.funnel.rolled_back} rolled back`),
      ` of ${r.funnel.offered} attempts.`)));
}

function bannerLink(r, step, text) {
  return h("a", { href: "#/fleet", "data-banner-step": step,
    onclick: (e) => { e.preventDefault(); showAgentsOf(r, step); } }, text);
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
  liveTimer = setTimeout(() => {
    liveTimer = null;
    if (editingField()) { heldRefresh = true; return; }
    readView({ live: true }).catch(showError);
  }, LIVE_MS);
}

// Whether the operator is typing into one of the page's fields (a form's, or a release's rollout
// and halt inputs beside their buttons): a live re-read would throw away what they typed, or
// swap the button they are about to press for one that sends the old value, so it waits until
// they leave the field. The fleet's search box is the exception: the re-read keeps it focused.
function editingField() {
  const active = document.activeElement;
  return Boolean(active && active.closest("#view") && active.id !== "search"
    && active.matches("input, select, textarea"));
}
document.addEventListener("focusout", () => setTimeout(() => {
  if (heldRefresh && !editingField()) { heldRefresh = false; scheduleRefresh(); }
}, 0));

function showError(error) {
  if (error.status === 401) return;
  $("#view").replaceChildren(h("p", { class: "error", role: "alert" }, error.message));
}

// The audit log (admins): who did what, newest first, a page at a time.
async function auditView() {
  const rows = h("tbody", {});
  const more = h("button", { type: "button", id: "audit-more" }, "Older entries");
  const load = async (path) => {
    const page = await apiPage(path);
    rows.append(...page.items.map((e) => h("tr", { "data-audit": e.action },
      h("td", {}, when(e.at)), h("td", {}, e.actor), h("td", {}, e.action), h("td", {}, e.target ?? ""),
      h("td", { class: e.outcome === "ok" ? "" : "bad" }, e.outcome + (e.repeats > 1 ? ` ×${e.repeats}` : "")),
      h("td", { class: "muted" }, e.source))));
    more.hidden = !page.next;
    more.onclick = () => load(page.next).catch(showError);
  };
  await load("/api/v1/audit?limit=100");
  return [
    h("h2", {}, "Audit log"),
    h("p", { class: "muted" }, "Every change and every refused or denied attempt, by operator token or command-line user."),
    h("table", { id: "audit" },
      h("thead", {}, h("tr", {}, ["At", "Actor", "Action", "Target", "Outcome", "Source"].map((c) => h("th", {}, c)))),
      rows),
    more,
  ];
}

const VIEWS = { fleet: fleetView, groups: groupsView, errors: errorsView, releases: releasesView, agent: agentView, audit: auditView };

// Re-reads and shows the current view (also used as a promise callback: it takes no argument).
function refresh() {
  return readView({ live: false });
}

// Re-reads and shows the current view. A live re-read (`live`) that finds the operator typing
// once its answers are in holds off, like one that finds them typing before it starts.
async function readView({ live }) {
  if (!me) return;
  const [asked, arg] = (location.hash.replace(/^#\//, "") || "fleet").split("/");
  const view = asked in VIEWS ? asked : "fleet";
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.view === view);
  }
  const searching = document.activeElement && document.activeElement.id === "search";
  const content = await VIEWS[view](decodeURIComponent(arg || ""));
  if (live && editingField()) { heldRefresh = true; return; }
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
    "errors_reported", "update_stuck", "lagged"];
  for (const name of names) feed.addEventListener(name, scheduleRefresh);
}

function signedIn(who) {
  me = who;
  $("#sign-in").hidden = true;
  $("#nav").hidden = false;
  $("#sign-out").hidden = false;
  $("#who").textContent = `${who.name} (${who.role})`;
  document.body.dataset.role = who.role;
  document.querySelector('nav a[data-view="audit"]').hidden = who.role !== "admin";
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
