// Browser test of the operator dashboard: Playwright (playwright-core) drives the system's
// Chromium, headless, against a real cms-server with real agents on loopback. Started by
// crates/server/tests/browser.rs, which builds the binaries and passes their paths:
// CMS_SERVER_EXE, CMS_AGENT_EXE (the current version), CMS_AGENT_V2_DIR and CMS_AGENT_V301_DIR
// (cms_agent and updater built as 2.0.0 and 3.0.1), CMS_WORK_DIR (an empty temp dir; the
// server's log goes to server.log in it), CMS_SCREENSHOTS, CMS_CHROMIUM.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, openSync, readFileSync, writeFileSync, chmodSync } from "node:fs";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { chromium } from "playwright-core";

const env = process.env;
const SERVER = env.CMS_SERVER_EXE;
const work = env.CMS_WORK_DIR;
const shots = env.CMS_SCREENSHOTS;
const serverDir = join(work, "server");
const PLATFORM = "linux-x86_64";
const LONG = 120_000;
mkdirSync(shots, { recursive: true });

const children = [];
const agentDirs = [];

function cli(...args) {
  return execFileSync(SERVER, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
}

function startServer() {
  const child = spawn(SERVER, ["serve", "--listen", "127.0.0.1:0", "--data-dir", serverDir,
    "--offline-after", "15", "--open-enrollment", "--plan-check-secs", "1"], { stdio: ["ignore", "pipe", openSync(join(work, "server.log"), "w")] });
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const match = out.match(/listening on (http:\/\/\S+)/);
      if (match) resolve(match[1]);
    });
    child.on("exit", (code) => reject(new Error(`cms-server exited with ${code}`)));
  });
}

function startAgent(url, name) {
  const dir = join(work, name);
  mkdirSync(join(dir, "install"), { recursive: true });
  const exe = join(dir, "install", "cms_agent");
  copyFileSync(env.CMS_AGENT_EXE, exe);
  chmodSync(exe, 0o755);
  const child = spawn(exe, ["--server", url, "--data-dir", join(dir, "data"),
    "--status-interval", "1", "--update-poll-interval", "3600"], {
    stdio: "ignore",
    env: { ...env, CMS_UPDATER_GRACE_SECS: "1", CMS_UPDATER_VERIFY_SECS: "20", CMS_UPDATER_WAIT_SECS: "20" },
  });
  children.push(child);
  agentDirs.push(dir);
}

const token = (role, name) => cli("token", "create", "--data-dir", serverDir, "--role", role, "--name", name);
const tokens = { operator: token("operator", "ops"), viewer: token("viewer", "watcher"), admin: token("admin", "root") };
const url = await startServer();
const browser = await chromium.launch({ executablePath: env.CMS_CHROMIUM, headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });

after(async () => {
  await browser.close();
  for (const dir of agentDirs) {
    try {
      const pid = JSON.parse(readFileSync(join(dir, "data", "agent.lock"), "utf8")).pid;
      process.kill(pid, "SIGTERM");
    } catch { /* not running */ }
  }
  for (const child of children) child.kill("SIGTERM");
});

async function signIn(role) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => { throw error; });
  await page.goto(url);
  await page.fill("#token", tokens[role]);
  await page.click("#sign-in button[type=submit]");
  await page.waitForSelector("[data-count=total]");
  return page;
}

// Shows `view` (a reload, so it is read afresh even when the page already shows it).
async function show(page, view) {
  await page.goto(`${url}/#/${view}`);
  await page.reload();
  await page.waitForSelector(`#view[data-view="${view}"]`);
}

const countOf = (page, card) => page.locator(`[data-count=${card}] .n`);
const stepOf = (page, release, step) =>
  page.locator(`[data-release="${release}"] > .funnel [data-step=${step}] b`);

async function bearer(method, path, role, body) {
  const response = await fetch(url + path, {
    method, body: body && JSON.stringify(body),
    headers: { Authorization: `Bearer ${tokens[role]}`, "Content-Type": "application/json" },
  });
  return { status: response.status, body: await response.json().catch(() => null) };
}

let page;

test("a wrong token is refused and an operator token signs in", async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const first = await context.newPage();
  await first.goto(url);
  await first.fill("#token", "cmso_not-a-token");
  await first.click("#sign-in button[type=submit]");
  await first.waitForSelector("#sign-in-error:has-text('not a valid operator token')");
  await first.screenshot({ path: join(shots, "sign-in.png") });
  await context.close();
  page = await signIn("operator");
  assert.equal(await countOf(page, "total").textContent(), "0");
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === "cms_session");
  assert.ok(session && session.httpOnly && session.sameSite === "Strict", "HttpOnly, SameSite=Strict");
});

test("a new agent appears live, with its page", async () => {
  startAgent(url, "agent-a");
  await page.locator("#agents tr[data-agent]").first().waitFor({ timeout: LONG });
  await page.locator("[data-count=online] .n:text-is('1')").waitFor({ timeout: LONG });
  await page.screenshot({ path: join(shots, "fleet-one-agent.png") });
  const agentId = await page.locator("#agents tr[data-agent]").first().getAttribute("data-agent");
  await page.click(`#agents tr[data-agent="${agentId}"] a`);
  await page.waitForSelector("text=Version history");
  await page.waitForSelector("text=Memory (RSS)", { timeout: LONG });
  await page.screenshot({ path: join(shots, "agent.png"), fullPage: true });
});

test("the groups page lists the agents per group, the fleet filters by group", async () => {
  await show(page, "groups");
  await page.locator('#groups tr[data-group="default"] td:text-is("1")').waitFor({ timeout: LONG });
  await page.screenshot({ path: join(shots, "groups.png"), fullPage: true });
  await page.click('#groups tr[data-group="default"] a');
  await page.waitForSelector('#view[data-view="fleet"]');
  await page.locator("#agents tr[data-agent]").first().waitFor({ timeout: LONG });
  await page.fill("#group-filter", "zz-no-such-group");
  await page.locator("#agent-total:text-is('0–0 of 0')").waitFor();
  await page.fill("#group-filter", "");
});

// Six agents, as a small first fleet: one is the canary of a staged release, or two when their
// cohorts tie (a cohort is a percent: 1 % of the fleet includes every agent in the lowest one).
const FLEET = 6;
let canaries = 0;

// An agent's rollout cohort, by docs/protocol.md's rule: the first 4 bytes of SHA-256 of its id,
// big-endian, modulo 100; a rollout to R % includes the agents whose cohort is below R.
const cohort = (agentId) => createHash("sha256").update(agentId).digest().readUInt32BE(0) % 100;

test("a published release's funnel reaches healthy", async () => {
  for (const name of ["agent-b", "agent-c", "agent-d", "agent-e", "agent-f"]) startAgent(url, name);
  await show(page, "fleet");
  await page.locator(`[data-count=online] .n:text-is('${FLEET}')`).waitFor({ timeout: LONG });
  await page.fill("#search", "zz-no-such-host");
  await page.locator("#agent-total:text-is('0–0 of 0')").waitFor();
  await page.fill("#search", "");
  await page.locator("#agents tr[data-agent]").nth(FLEET - 1).waitFor();
  await show(page, "releases");
  await page.waitForSelector("text=No release published yet.");
  const v2 = env.CMS_AGENT_V2_DIR;
  cli("release", "publish", "--data-dir", serverDir, "--version", "2.0.0",
    "--agent", join(v2, "cms_agent"), "--updater", join(v2, "updater"), "--rollout", "100");
  await stepOf(page, `2.0.0/${PLATFORM}`, "healthy").filter({ hasText: new RegExp(`^${FLEET}$`) }).waitFor({ timeout: LONG });
  assert.equal(await stepOf(page, `2.0.0/${PLATFORM}`, "handed_over").textContent(), `${FLEET}`);
  // Each group the release reached has its own funnel (all the agents are in `default`).
  const groupHealthy = page.locator(
    `[data-release="2.0.0/${PLATFORM}"] [data-group-funnel="default"] [data-step="healthy"] b`);
  await groupHealthy.filter({ hasText: new RegExp(`^${FLEET}$`) }).waitFor({ timeout: LONG });
  await page.locator(`[data-release="2.0.0/${PLATFORM}"] [data-in-flight="0"]`).waitFor();
  // The operator caps the group's updates in flight from the page; the group's funnel shows it.
  const groupForm = page.locator(`[data-group-rollout="2.0.0/${PLATFORM}"]`);
  await groupForm.locator('input[name="group"]').fill("default");
  await groupForm.locator('input[name="max_in_flight"]').fill("2");
  await groupForm.locator('button[type="submit"]').click();
  await page.locator(`[data-release="2.0.0/${PLATFORM}"] [data-group-funnel="default"] [data-group-in-flight]`)
    .filter({ hasText: "of at most 2" }).waitFor({ timeout: LONG });
  // The halt rule is edited in the page (operator).
  const card2 = page.locator(`[data-release="2.0.0/${PLATFORM}"]`);
  await card2.locator("[data-input=halt-min-attempts]").fill("25");
  await card2.locator("button[data-action=set-halt]").click();
  await card2.getByText("failures of at least 25 attempts").waitFor({ timeout: LONG });
  await page.screenshot({ path: join(shots, "releases.png"), fullPage: true });
  // The groups page shows each group's progress in the release.
  await show(page, "groups");
  await page.locator(`#groups tr[data-group="default"] [data-group-release="2.0.0/${PLATFORM}"]`)
    .filter({ hasText: `${FLEET} healthy of ${FLEET} offered` }).waitFor({ timeout: LONG });
  await show(page, "fleet");
  await page.locator("#agents tr[data-agent]").nth(FLEET - 1).waitFor();
  await page.locator(`[data-count=online] .n:text-is('${FLEET}')`).waitFor({ timeout: LONG });
  await page.screenshot({ path: join(shots, "fleet.png"), fullPage: true });
});

test("a broken release published with the defaults halts at its canary", async () => {
  const broken = join(work, "broken_agent");
  writeFileSync(broken, "#!/bin/sh\necho 'crashes at start' >&2\nexit 1\n");
  chmodSync(broken, 0o755);
  // Staged by default: the first stage is one agent of six, and the halt rule scales to it.
  cli("release", "publish", "--data-dir", serverDir, "--version", "3.0.0", "--agent", broken,
    "--updater", join(env.CMS_AGENT_V2_DIR, "updater"));
  await show(page, "releases");
  const card = page.locator(`[data-release="3.0.0/${PLATFORM}"]`);
  await card.waitFor();
  await card.locator("[data-plan-stage='1']").waitFor();
  const stage1 = JSON.parse(cli("rollout", "status", "--data-dir", serverDir, "--version", "3.0.0"));
  const fleet = (await bearer("GET", "/api/v1/agents", "operator")).body;
  canaries = fleet.filter((a) => cohort(a.agent_id) < stage1.rollout_percent).length;
  assert.ok(canaries >= 1 && canaries < FLEET, `stage 1 at ${stage1.rollout_percent} % holds ${canaries} agents`);
  await page.locator(`[data-banner="3.0.0/${PLATFORM}"]`).waitFor({ timeout: LONG });
  await card.locator(".badge.halted").waitFor();
  await stepOf(page, `3.0.0/${PLATFORM}`, "rolled_back").filter({ hasText: new RegExp(`^${canaries}$`) })
    .waitFor({ timeout: LONG });
  assert.equal(await stepOf(page, `3.0.0/${PLATFORM}`, "offered").textContent(), `${canaries}`,
    "only the canary was offered the broken release");
  await card.locator("button[data-action=resume]").waitFor();
  await page.locator(`[data-reasons="3.0.0/${PLATFORM}"] li`).first().waitFor({ timeout: LONG });
  await page.screenshot({ path: join(shots, "releases-halted.png"), fullPage: true });
  // One click from the banner to the agents that rolled back, with their reason.
  await page.locator(`[data-banner="3.0.0/${PLATFORM}"] a[data-banner-step=rolled_back]`).click();
  await page.waitForSelector('#view[data-view="fleet"] #release-filter');
  const reason = page.locator('#agents tr[data-agent] [data-field="reason"]').first();
  await reason.waitFor({ timeout: LONG });
  assert.notEqual((await reason.textContent()).trim(), "", "the rollback's reason is shown");
  assert.equal(await page.locator('#agents tr[data-agent] [data-field="update-step"]').first().textContent(), "rolled back");
  await page.screenshot({ path: join(shots, "fleet-rolled-back.png"), fullPage: true });
  // The agent's page groups its attempts, with the reason on the failed one.
  await page.locator("#agents tr[data-agent] a").first().click();
  await page.locator('[data-attempt="3.0.0"] [data-field="attempt-reason"]').waitFor({ timeout: LONG });
  await page.locator('[data-field="metrics-at"] time').waitFor();
  await page.screenshot({ path: join(shots, "agent-attempts.png"), fullPage: true });
  await page.goBack();
  await page.waitForSelector('#view[data-view="fleet"] #release-filter');
  await page.click("#release-filter button");
  await page.locator("#release-filter").waitFor({ state: "detached" });
  const audit = await bearer("GET", "/api/v1/audit?limit=100", "admin");
  const actions = audit.body.map((e) => `${e.actor} ${e.action} ${e.target} ${e.outcome}`);
  assert.ok(actions.includes(`server:halt rollout.halt 3.0.0/${PLATFORM} ok`), actions.join("\n"));
  assert.ok(actions.includes(`ops rollout.set 2.0.0/${PLATFORM} ok`), actions.join("\n"));
  const status = JSON.parse(cli("rollout", "status", "--data-dir", serverDir, "--version", "3.0.0"));
  assert.equal(status.paused, true);
  const csrf = await page.evaluate(async (path) => (await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: '{"action":"resume"}',
  })).status, `/api/v1/rollouts/${PLATFORM}/3.0.0`);
  assert.equal(csrf, 403, "a cookie request without the CSRF header is refused");
  // Resume asks for a reason, shows the failures, and keeps the halt in the release's history.
  await show(page, "releases");
  await card.locator("button[data-action=resume]").click();
  const form = card.locator("[data-resume-form] ");
  await form.getByText(`${canaries} rolled back of ${canaries} attempts`).waitFor();
  await form.locator("button[data-action=confirm-resume]").click();
  assert.equal(await card.locator(".badge.halted").count(), 1, "no resume without a reason");
  await form.locator("textarea").fill("fixed the start-up crash in 3.0.1");
  await page.screenshot({ path: join(shots, "releases-resume.png"), fullPage: true });
  await form.locator("button[data-action=confirm-resume]").click();
  await card.locator("[data-halts] li").filter({ hasText: "fixed the start-up crash" }).waitFor({ timeout: LONG });
  await page.screenshot({ path: join(shots, "releases-resumed.png"), fullPage: true });
  await show(page, "errors");
  await page.locator("#error-groups td:text-is('update_rolled_back')").waitFor();
  await page.screenshot({ path: join(shots, "errors.png"), fullPage: true });
  const favicon = await page.evaluate(async () => (await fetch("/assets/favicon.svg")).status);
  assert.equal(favicon, 200);
  // The audit page is for admins: it shows the halt; an operator has no link to it.
  assert.equal(await page.locator('nav a[data-view="audit"]').isHidden(), true);
  const admin = await signIn("admin");
  await show(admin, "audit");
  await admin.locator('#audit tr[data-audit="rollout.halt"]').first().waitFor({ timeout: LONG });
  await admin.screenshot({ path: join(shots, "audit.png"), fullPage: true });
  await admin.context().close();
});

test("a fixed release passes its stages by itself and supersedes the broken one", async () => {
  const fixed = env.CMS_AGENT_V301_DIR;
  cli("release", "publish", "--data-dir", serverDir, "--version", "3.0.1", "--agent", join(fixed, "cms_agent"),
    "--updater", join(fixed, "updater"), "--stages", "1%,50%,100%", "--stage-soak", "2s");
  await show(page, "releases");
  const card = page.locator(`[data-release="3.0.1/${PLATFORM}"]`);
  await card.locator("[data-plan-stage='1']").waitFor({ timeout: LONG });
  await page.locator(`[data-release="3.0.0/${PLATFORM}"] [data-badge=superseded]`).waitFor({ timeout: LONG });
  await card.locator("[data-plan-stage='3']").waitFor({ timeout: LONG });
  await stepOf(page, `3.0.1/${PLATFORM}`, "healthy").filter({ hasText: new RegExp(`^${FLEET}$`) })
    .waitFor({ timeout: LONG });
  await card.getByText("last stage reached").waitFor();
  assert.equal(await card.locator(".badge.on").textContent(), "rolling out");
  assert.equal(await card.locator(".badge.halted").count(), 0);
  await page.screenshot({ path: join(shots, "releases-staged.png"), fullPage: true });
  const advances = (await bearer("GET", "/api/v1/audit?limit=200", "admin")).body
    .filter((e) => e.action === "rollout.advance" && e.target.startsWith(`3.0.1/${PLATFORM} `));
  assert.equal(advances.length, 2, "two advances: stage 1 to 2 and 2 to 3");
  assert.equal(await stepOf(page, `3.0.0/${PLATFORM}`, "offered").textContent(), `${canaries}`,
    "the broken release's plan stopped once 3.0.1 was published: its canary only");
  const fleet = await bearer("GET", "/api/v1/agents", "operator");
  assert.deepEqual(fleet.body.map((a) => a.version), Array(FLEET).fill("3.0.1"));
});

test("a viewer sees no action buttons and gets 403 from the API", async () => {
  const viewer = await signIn("viewer");
  await show(viewer, "releases");
  await viewer.locator(`[data-release="2.0.0/${PLATFORM}"]`).waitFor();
  assert.equal(await viewer.locator("button[data-action]").count(), 0);
  await viewer.screenshot({ path: join(shots, "viewer-releases.png"), fullPage: true });
  const byCookie = await viewer.evaluate(async (path) => (await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json", "X-CMS-CSRF": "1" },
    body: '{"action":"pause"}',
  })).status, `/api/v1/rollouts/${PLATFORM}/2.0.0`);
  assert.equal(byCookie, 403);
  const byToken = await bearer("POST", `/api/v1/rollouts/${PLATFORM}/2.0.0`, "viewer", { action: "pause" });
  assert.equal(byToken.status, 403);
  const status = JSON.parse(cli("rollout", "status", "--data-dir", serverDir, "--version", "2.0.0"));
  assert.equal(status.paused, false, "the viewer's pause did nothing");
});

test("an operator revokes an agent from its page and sees it revoked", async () => {
  await show(page, "fleet");
  const row = page.locator("#agents tr[data-agent]").first();
  await row.waitFor({ timeout: LONG });
  const agentId = await row.getAttribute("data-agent");
  const viewer = await signIn("viewer");
  await viewer.goto(`${url}/#/agent/${agentId}`);
  await viewer.waitForSelector("text=Version history");
  assert.equal(await viewer.locator("button[data-action=revoke]").count(), 0, "a viewer has no Revoke");
  await viewer.context().close();

  await row.locator("a").click();
  await page.waitForSelector("text=Version history");
  page.once("dialog", (dialog) => dialog.accept());
  await page.click("button[data-action=revoke]");
  await page.locator(".badge.revoked").waitFor({ timeout: LONG });
  assert.equal(await page.locator("button[data-action=revoke]").count(), 0, "no Revoke once revoked");
  await page.screenshot({ path: join(shots, "agent-revoked.png"), fullPage: true });
  const agents = await bearer("GET", "/api/v1/agents", "operator");
  const revoked = agents.body.find((a) => a.agent_id === agentId);
  assert.ok(revoked.revoked_at && !revoked.online, JSON.stringify(revoked));
  await show(page, "fleet");
  await page.locator("[data-count=revoked] .n:text-is('1')").waitFor({ timeout: LONG });
  await page.locator(`#agents tr[data-agent="${agentId}"] .badge.revoked`).waitFor();
  const audit = await bearer("GET", "/api/v1/audit?limit=100", "admin");
  const actions = audit.body.map((e) => `${e.actor} ${e.action} ${e.target} ${e.outcome}`);
  assert.ok(actions.includes(`ops agent.revoke ${agentId} ok`), actions.join("\n"));
});
