// The admin page (served at /admin/admin.js): sources, principals, keys, adapters, feedback, audit and "view as",
// all through the admin API (/v1/admin/...). Sign-in: an admin API key pasted here (kept in session storage
// and sent as a bearer token), or the identity provider's session cookie when OpenID Connect is configured.
//
// Everything the server sends is untrusted (document titles, principal names, audit payloads): it reaches
// the page only as text, through node() and textContent, never parsed as HTML (no HTML-string APIs at all).
"use strict";
(function () {
  const STORE = "citeline.adminKey";
  const PROBE = "/v1/admin/principals";  // any admin route: 200 = admin, 401 = signed out, 403 = not an admin
  const NOT_ADMIN = "You are signed in, but not as an admin: this page needs an admin key " +
    "(`citeline keys create USER --admin`) or membership of an admin group. Nothing was loaded.";
  const $ = (id) => document.getElementById(id);

  let apiKey = null;      // null: the session cookie (if any) identifies us
  let current = "sources";
  const auditState = { rows: [], filters: {}, next: null };

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  // -- DOM helpers (text only) -------------------------------------------------------------------------
  function node(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "dataset") Object.assign(e.dataset, v);
      else if (k === "onclick") e.addEventListener("click", v);
      else e[k] = v;  // className, type, title, disabled: properties, never markup
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const str = (v) => (v === undefined || v === null) ? "" : String(v);
  function when(v) {
    if (!v) return "";
    const d = new Date(v);
    if (isNaN(d.getTime())) return str(v);
    const p = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " + p(d.getHours()) + ":" + p(d.getMinutes());
  }
  function pill(text, kind) { return node("span", { className: "pill" + (kind ? " " + kind : "") }, text); }
  function pick(row, ...names) {
    for (const n of names) if (row && row[n] !== undefined && row[n] !== null) return row[n];
    return undefined;
  }
  function rowsOf(body, ...names) {
    if (Array.isArray(body)) return body;
    for (const n of [...names, "items", "rows", "results"]) if (body && Array.isArray(body[n])) return body[n];
    return [];
  }
  function table(id, columns, rows, rowClass) {
    const t = $(id);
    const head = node("thead", {}, node("tr", {}, columns.map((c) => node("th", { scope: "col" }, c.label))));
    const body = node("tbody", {}, rows.map((r) => node("tr", { className: rowClass ? rowClass(r) : "", dataset: r.__data || {} },
      columns.map((c) => node("td", { className: c.cls || "", dataset: { label: c.label } }, c.cell(r))))));
    t.replaceChildren(head, body);
  }
  function notify(message, bad) {
    const n = $("notice");
    n.textContent = message;
    n.classList.toggle("bad", !!bad);
    n.hidden = !message;
  }

  // -- HTTP ------------------------------------------------------------------------------------------
  async function errorText(response) {
    let body = null;
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    if (body && body.error && typeof body.error === "object") return str(body.error.message) || response.statusText;
    if (body && body.detail !== undefined) {
      return Array.isArray(body.detail)
        ? body.detail.map((d) => (d && d.msg) ? (d.loc ? d.loc.slice(1).join(".") + ": " : "") + d.msg : JSON.stringify(d)).join("; ")
        : str(body.detail);
    }
    return response.status + " " + response.statusText;
  }
  async function request(method, path, body, key) {
    const headers = { "Accept": "application/json" };
    if (key) headers["Authorization"] = "Bearer " + key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, { method: method, headers: headers, cache: "no-store", credentials: "same-origin",
                                     body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new ApiError(0, e instanceof TypeError && /header|ISO-8859|code point/i.test(String(e.message))
        ? "That key contains characters an API key cannot have." : "Cannot reach the server: " + (e.message || e));
    }
    if (!response.ok) throw new ApiError(response.status, await errorText(response));
    const type = response.headers.get("content-type") || "";
    return type.includes("json") ? response.json() : response.text();
  }
  // Every call after sign-in: a 401 or 403 signs out (and drops every view's data); other errors are shown.
  async function api(method, path, body) {
    try {
      return await request(method, path, body, apiKey);
    } catch (e) {
      if (e.status === 401) showLogin("Your sign-in is no longer accepted (" + e.message + "). Sign in again.");
      else if (e.status === 403) showLogin(NOT_ADMIN);
      throw e;
    }
  }
  const enc = encodeURIComponent;
  // a view's reply is drawn only if no newer request for that view was made meanwhile (no stale overwrite)
  const latest = {};
  const ticket = (view) => (latest[view] = (latest[view] || 0) + 1);
  const isLatest = (view, t) => latest[view] === t;
  function shown(e) {  // an error worth a notice (sign-out errors already show the login form)
    if (e && (e.status === 401 || e.status === 403)) return;
    notify("Error: " + (e && e.message ? e.message : String(e)), true);
  }

  // -- sign-in ---------------------------------------------------------------------------------------
  function storeKey(key) {
    try { key ? sessionStorage.setItem(STORE, key) : sessionStorage.removeItem(STORE); } catch (e) { /* private mode */ }
  }
  function storedKey() {
    try { return sessionStorage.getItem(STORE); } catch (e) { return null; }
  }
  function clearData() {
    for (const t of document.querySelectorAll("table.data")) t.replaceChildren();
    for (const id of ["viewas-results", "new-key-secret", "new-key-user"]) $(id).replaceChildren();
    for (const id of ["new-key", "viewas-answer", "audit-verified", "replay", "audit-more"]) $(id).hidden = true;
    auditState.rows = [];
    notify("");
  }
  function showLogin(message) {
    apiKey = null;
    storeKey(null);
    clearData();
    $("admin-view").hidden = true;
    $("logout").hidden = true;
    $("who").textContent = "";
    $("login-view").hidden = false;
    $("login").disabled = false;
    $("login-error").textContent = message || "";
    $("login-error").hidden = !message;
  }
  function showAdmin(how) {
    $("login-view").hidden = true;
    $("login-error").hidden = true;
    $("admin-view").hidden = false;
    $("logout").hidden = false;
    $("who").textContent = how;
    select(current);
  }
  async function signIn(key) {
    $("login").disabled = true;
    try {
      await request("GET", PROBE, undefined, key);
    } catch (e) {
      showLogin(e.status === 403 ? NOT_ADMIN : e.status === 401 ? "That API key was not accepted: " + e.message
        : "The server could not check the key (" + (e.status || "no answer") + "): " + e.message);
      return;
    } finally {
      $("login").disabled = false;
    }
    apiKey = key;
    storeKey(key);
    $("api-key").value = "";
    showAdmin("signed in with an API key");
  }
  async function signOut() {
    const session = !apiKey;
    showLogin("");
    if (session && document.body.dataset.oidc === "on") window.location.assign("/auth/logout");
  }

  // -- views -----------------------------------------------------------------------------------------
  const LOADERS = { sources: loadSources, principals: loadPrincipals, keys: loadKeys, adapters: loadAdapters,
                    feedback: loadFeedback, audit: () => searchAudit(false), viewas: () => Promise.resolve() };
  function select(view) {
    current = view;
    for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.view === view);
    for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== "view-" + view;
    notify("");
    refresh(view);  // every visit shows the data as it is now
  }
  async function refresh(view) {
    try { await LOADERS[view](); } catch (e) { shown(e); }
  }

  // sources: documents, last and next run, failures, a sync button
  const RUNNING = new Set(["running", "queued", "started", "pending"]);
  const syncing = {};  // source name -> true while its sync runs
  function runCell(s) {
    const status = str(pick(s, "last_run_status", "status"));
    if (syncing[s.name] !== undefined) return node("span", { className: "sync-state" }, pill("syncing…", "warn"));
    if (!status) return node("span", { className: "muted" }, "never run");
    const counts = s.counts || {};
    const kind = status === "succeeded" ? "ok"
      : RUNNING.has(status) ? "warn" : "bad";
    return node("span", { className: "sync-state" }, pill(status, kind), " ",
      when(pick(s, "last_run_finished", "last_run_started")),
      node("div", { className: "muted" }, ["added", "updated", "deleted"].filter((k) => counts[k])
        .map((k) => counts[k] + " " + k).join(", ")));
  }
  function failureCell(s) {
    const failed = (s.counts && s.counts.failed) || 0;
    const error = str(pick(s, "error", "last_error"));
    if (!failed && !error) return node("span", { className: "muted" }, "none");
    return node("span", { className: "failure" }, failed ? failed + " failed" : "", failed && error ? ": " : "", error);
  }
  async function loadSources() {
    const t = ticket("sources");
    const rows = rowsOf(await api("GET", "/v1/admin/sources"), "sources");
    if (!isLatest("sources", t)) return;
    rows.forEach((s) => { s.__data = { source: str(s.name) }; });
    $("sources-empty").hidden = rows.length > 0;
    table("sources-table", [
      { label: "Source", cell: (s) => [node("strong", { className: "name" }, str(s.name)), " ", node("span", { className: "muted" }, str(s.connector))] },
      { label: "Documents", cls: "num docs", cell: (s) => str(pick(s, "documents", "document_count") ?? 0) },
      { label: "Last run", cls: "last-run", cell: runCell },
      { label: "Next run", cls: "next-run", cell: (s) => s.next_run ? when(s.next_run) : node("span", { className: "muted" }, s.schedule ? "—" : "not scheduled") },
      { label: "Failures", cls: "failures", cell: failureCell },
      { label: "", cls: "actions", cell: (s) => node("button", { type: "button", className: "small sync", disabled: syncing[s.name] !== undefined,
                                                           onclick: () => sync(s) }, "Sync now") },
    ], rows);
    return rows;
  }
  async function sync(source) {
    const name = str(source.name);
    syncing[name] = true;
    await loadSources().catch(() => {});
    let started;
    try {
      started = await api("POST", "/v1/admin/sources/" + enc(name) + "/sync", { full: false });
      notify("Sync of " + name + " started (run " + str(started.run_id) + ").");
      const url = str(started.status_url);
      // only ever the admin API's own run route (the reply is data, not a place to send the key to)
      const path = url.startsWith("/v1/admin/") ? url : "/v1/admin/sources/runs/" + enc(started.run_id);
      let run = { status: "running" };
      for (let i = 0; i < 900 && RUNNING.has(str(run.status)) && !$("admin-view").hidden; i++) {
        await new Promise((r) => setTimeout(r, i < 10 ? 300 : 1000));
        run = await api("GET", path);
      }
      if (!RUNNING.has(str(run.status))) {
        const failed = run.failed ? "; " + run.failed + " document(s) failed" : "";
        notify("Sync of " + name + " (run " + str(run.run_id) + ") " + str(run.status) + ": " + str(run.added) +
          " added, " + str(run.updated) + " updated, " + str(run.deleted) + " deleted" + failed +
          (run.error ? " — " + str(run.error) : "") + ".", run.status !== "succeeded");
      }
    } catch (e) {
      shown(e);
    } finally {
      delete syncing[name];
    }
    if (!$("admin-view").hidden) await loadSources().catch(shown);
  }

  // principals and their groups
  async function loadPrincipals() {
    const t = ticket("principals");
    const rows = rowsOf(await api("GET", "/v1/admin/principals"), "principals");
    if (!isLatest("principals", t)) return;
    rows.forEach((p) => { p.__data = { user: str(p.user) }; });
    table("principals-table", [
      { label: "User", cls: "user", cell: (p) => str(p.user) },
      { label: "Groups", cls: "groups", cell: (p) => (p.groups || []).map((g) => pill(str(g))) },
      { label: "Team", cls: "team", cell: (p) => str(p.team) },
      { label: "", cls: "actions", cell: (p) => node("button", { type: "button", className: "small danger", onclick: () => removePrincipal(p.user) }, "Delete") },
    ], rows);
  }
  async function removePrincipal(user) {
    if (!window.confirm("Delete principal " + user + "? Their API keys are revoked too.")) return;
    try {
      const out = await api("DELETE", "/v1/admin/principals/" + enc(user));
      const revoked = rowsOf(out, "revoked_keys").length;
      notify("Deleted " + user + (revoked ? "; revoked " + revoked + " key(s)." : "."));
      await loadPrincipals();
    } catch (e) { shown(e); }
  }
  async function savePrincipal() {
    const groups = $("p-groups").value.split(",").map((g) => g.trim()).filter(Boolean);
    const body = { user: $("p-user").value.trim(), groups: groups, team: $("p-team").value.trim() || null };
    try {
      const p = await api("PUT", "/v1/admin/principals", body);
      notify("Saved " + str(p.user) + ".");
      for (const id of ["p-user", "p-groups", "p-team"]) $(id).value = "";
      await loadPrincipals();
    } catch (e) { shown(e); }
  }

  // keys: the secret is shown once, right after creation
  async function loadKeys() {
    const t = ticket("keys");
    const rows = rowsOf(await api("GET", "/v1/admin/keys"), "keys");
    if (!isLatest("keys", t)) return;
    rows.forEach((k) => { k.__data = { key: str(k.key_id) }; });
    table("keys-table", [
      { label: "Key", cls: "key-id", cell: (k) => node("code", {}, str(k.key_id)) },
      { label: "User", cls: "user", cell: (k) => str(k.user) },
      { label: "Admin", cell: (k) => pick(k, "is_admin", "admin") ? pill("admin", "warn") : "" },
      { label: "Label", cell: (k) => str(k.label) },
      { label: "Created", cell: (k) => when(k.created_at) },
      { label: "State", cls: "state", cell: (k) => k.revoked_at ? "revoked " + when(k.revoked_at) : pill("active", "ok") },
      { label: "", cls: "actions", cell: (k) => k.revoked_at ? "" : node("button", { type: "button", className: "small danger revoke", onclick: () => revokeKey(k) }, "Revoke") },
    ], rows, (k) => k.revoked_at ? "revoked" : "");
  }
  async function createKey() {
    const body = { user: $("k-user").value.trim(), label: $("k-label").value.trim(), admin: $("k-admin").checked };
    $("k-create").disabled = true;
    try {
      const made = await api("POST", "/v1/admin/keys", body);
      $("new-key-user").textContent = str(made.user);
      $("new-key-secret").textContent = str(pick(made, "key", "secret"));
      $("new-key").hidden = false;
      for (const id of ["k-user", "k-label"]) $(id).value = "";
      $("k-admin").checked = false;
      await loadKeys();
    } catch (e) { shown(e); } finally { $("k-create").disabled = false; }
  }
  async function revokeKey(k) {
    if (!window.confirm("Revoke key " + k.key_id + " of " + k.user + "? Programs using it stop working at once.")) return;
    try {
      await api("DELETE", "/v1/admin/keys/" + enc(k.key_id));
      notify("Revoked key " + k.key_id + ".");
      await loadKeys();
    } catch (e) { shown(e); }
  }

  // adapters and their evaluation against the prompting baseline
  function num(v) { return typeof v === "number" ? v.toFixed(3) : ""; }
  function versusBaseline(a) {
    const m = a.metrics || {};
    const mine = m.format_compliance, base = m.baseline_format_compliance;
    if (typeof mine !== "number" || typeof base !== "number") return node("span", { className: "muted" }, "not evaluated");
    const d = mine - base;
    return node("span", {}, num(mine) + " vs " + num(base) + " ",
      node("span", { className: d > 0 ? "better" : "worse" }, (d > 0 ? "+" : "") + d.toFixed(3)));
  }
  async function loadAdapters() {
    const t = ticket("adapters");
    const rows = rowsOf(await api("GET", "/v1/admin/adapters"), "adapters");
    if (!isLatest("adapters", t)) return;
    rows.forEach((a) => { a.__data = { adapter: str(a.served_name) }; });
    $("adapters-empty").hidden = rows.length > 0;
    const status = (a) => pill(str(a.status), a.status === "active" ? "ok" : a.status === "retired" ? "bad" : "");
    table("adapters-table", [
      { label: "Served name", cls: "served", cell: (a) => node("code", {}, str(a.served_name)) },
      { label: "Team", cell: (a) => str(a.team) },
      { label: "Status", cls: "status", cell: status },
      { label: "Rank", cls: "num", cell: (a) => str(a.rank) },
      { label: "Format vs baseline", cls: "eval", cell: versusBaseline },
      { label: "Base model", cell: (a) => str(a.base_model) },
      { label: "Created", cell: (a) => when(a.created_at) },
      { label: "", cls: "actions", cell: (a) => [
        a.status !== "active" && a.status !== "retired" ? node("button", { type: "button", className: "small", onclick: () => adapterAction(a, "promote") }, "Promote") : "",
        a.status !== "retired" ? node("button", { type: "button", className: "small danger", onclick: () => adapterAction(a, "retire") }, "Retire") : ""] },
    ], rows);
  }
  async function adapterAction(a, action) {
    if (!window.confirm(action[0].toUpperCase() + action.slice(1) + " adapter " + a.served_name + "?")) return;
    try {
      await api("POST", "/v1/admin/adapters/" + enc(a.served_name) + "/" + action, action === "promote" ? { force: false } : undefined);
      notify(action === "promote" ? "Promoted " + a.served_name + "." : "Retired " + a.served_name + ".");
      await loadAdapters();
    } catch (e) { shown(e); }
  }

  // feedback: per team and adapter version, and the latest rows. Shown, never given: only the asker rates an answer.
  const percent = (v) => typeof v === "number" ? Math.round(v * 100) + "%" : "";
  function bestShares(summary) {  // team -> the best up share among its models, where a team has several rated
    const seen = {}, best = {};
    for (const s of summary) {
      if (!s.total) continue;
      const team = str(s.team);
      seen[team] = (seen[team] || 0) + 1;
      best[team] = Math.max(best[team] ?? 0, s.up_share);
    }
    for (const team of Object.keys(best)) if (seen[team] < 2) delete best[team];
    return best;
  }
  function shareCell(s, best) {
    const top = best[str(s.team)];
    if (top === undefined || !s.total) return percent(s.up_share);
    const behind = Math.round((top - s.up_share) * 100);
    return node("span", {}, percent(s.up_share), " ", behind > 0
      ? node("span", { className: "worse" }, "\u2212" + behind + " pts vs the team's best") : pill("best", "ok"));
  }
  async function loadFeedback() {
    const t = ticket("feedback");
    const q = new URLSearchParams({ limit: "100" });
    const filters = { team: $("f-team").value.trim(), model: $("f-model").value.trim(), rating: $("f-rating").value };
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    const body = await api("GET", "/v1/admin/feedback?" + q.toString());
    if (!isLatest("feedback", t)) return;
    const summary = rowsOf(body, "summary"), rows = rowsOf(body, "rows");
    const best = bestShares(summary);
    const team = (x) => x.team === null || x.team === undefined ? node("span", { className: "muted" }, "no team") : str(x.team);
    summary.forEach((s) => { s.__data = { team: str(s.team), model: str(s.model) }; });
    $("feedback-empty").hidden = summary.length > 0;
    table("feedback-summary-table", [
      { label: "Team", cls: "team", cell: team },
      { label: "Model", cls: "model", cell: (s) => node("code", {}, str(s.model)) },
      { label: "Up", cls: "num up", cell: (s) => str(s.up) },
      { label: "Down", cls: "num down", cell: (s) => str(s.down) },
      { label: "Corrected", cls: "num corrected", cell: (s) => str(s.corrected) },
      { label: "Up share", cls: "share", cell: (s) => shareCell(s, best) },
      { label: "Last", cls: "when", cell: (s) => when(s.last_at) },
    ], summary);
    rows.forEach((r) => { r.__data = { audit: str(r.audit_id) }; });
    table("feedback-table", [
      { label: "At", cls: "when", cell: (r) => when(r.updated_at) },
      { label: "Rating", cls: "rating", cell: (r) => pill(str(r.rating), r.rating === "up" ? "ok" : "bad") },
      { label: "Team", cls: "team", cell: team },
      { label: "Model", cls: "model", cell: (r) => node("code", {}, str(r.model)) },
      { label: "Asker", cls: "asker", cell: (r) => str(r.principal) },
      { label: "Question", cls: "question", cell: (r) => str(r.question) },
      { label: "Reason", cls: "reason", cell: (r) => str(r.reason) },
      { label: "Correction", cls: "correction", cell: (r) => r.correction === null || r.correction === undefined
        ? node("span", { className: "muted" }, "none") : node("div", { className: "payload" }, str(r.correction)) },
      { label: "", cls: "actions", cell: (r) => node("button", { type: "button", className: "small replay",
        title: "Replay the evidence this answer was shown (audited)", onclick: () => replayAnswer(r.audit_id) }, "Answer #" + str(r.audit_id)) },
    ], rows);
  }
  function replayAnswer(id) {  // the answer's audit row, replayed in the audit view
    select("audit");
    replay(id);
  }

  // audit: filters, older rows, chain verification, replay of an answer
  const PAGE = 50;
  const REPLAYABLE = new Set(["ask/answer", "search/search", "admin/impersonate"]);  // rows that record chunks shown
  function isoOf(local) { return local ? new Date(local).toISOString() : ""; }
  async function searchAudit(more) {
    const t = ticket("audit");
    const filters = more ? auditState.filters : {
      principal: $("a-principal").value.trim(), kind: $("a-kind").value.trim(), action: $("a-action").value.trim(),
      request_id: $("a-request").value.trim(), since: isoOf($("a-since").value), until: isoOf($("a-until").value) };
    const q = new URLSearchParams({ limit: String(PAGE) });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    if (more && auditState.next !== null) q.set("before", String(auditState.next));
    const body = await api("GET", "/v1/admin/audit?" + q.toString());
    if (!isLatest("audit", t)) return;
    auditState.filters = filters;
    auditState.rows = (more ? auditState.rows : []).concat(rowsOf(body, "rows"));
    auditState.next = body && typeof body.next_before === "number" ? body.next_before : null;
    $("audit-more").hidden = auditState.next === null;
    auditState.rows.forEach((r) => { r.__data = { id: str(r.id) }; });
    table("audit-table", [
      { label: "#", cls: "num", cell: (r) => str(r.id) },
      { label: "At", cell: (r) => when(r.at) },
      { label: "Kind", cls: "kind", cell: (r) => pill(str(r.kind)) },
      { label: "Principal", cls: "principal", cell: (r) => str(r.principal) },
      { label: "Action", cls: "action", cell: (r) => str(r.action) },
      { label: "Details", cls: "details", cell: (r) => node("div", { className: "payload" }, summary(r.payload)) },
      { label: "", cls: "actions", cell: (r) => REPLAYABLE.has(str(r.kind) + "/" + str(r.action))
        ? node("button", { type: "button", className: "small replay", onclick: () => replay(r.id) }, "Replay") : "" },
    ], auditState.rows);
  }
  function summary(payload) {
    if (!payload || typeof payload !== "object") return str(payload);
    const parts = [];
    for (const [k, v] of Object.entries(payload)) {
      const text = typeof v === "string" ? v : JSON.stringify(v);
      parts.push(k + ": " + (text.length > 160 ? text.slice(0, 160) + "…" : text));
    }
    return parts.join("\n");
  }
  async function verifyAudit() {
    const out = $("audit-verified");
    try {
      const v = await api("GET", "/v1/admin/audit/verify");
      out.replaceChildren(pill(v.ok ? "chain intact" : "chain broken", v.ok ? "ok" : "bad"), " ",
        str(v.rows) + " rows, head " + str(v.head).slice(0, 16) + "…",
        ...(v.problems || []).map((p) => node("div", { className: "failure" }, str(p))));
      out.hidden = false;
    } catch (e) { shown(e); }
  }
  async function replay(id) {
    const out = $("replay");
    try {
      const r = await api("GET", "/v1/admin/audit/" + enc(id) + "/replay");
      const chunks = rowsOf(r, "chunks", "sources");
      const question = r.row && r.row.payload ? str(r.row.payload.question) : "";
      out.replaceChildren(node("strong", {}, "Replay of audit row #" + id + (question ? ": " + question : "")),
        node("div", { className: "from" }, "asked by " + str(r.asker) + (r.asker_exists === false ? " (no longer a principal)" : "")),
        node("ol", { className: "results" }, chunks.map((c) => node("li", { className: "replayed" },
          node("div", { className: "title" }, str(pick(c, "title", "external_id", "chunk_id"))),
          node("div", { className: "from" }, [
            c.unchanged === false ? "changed since" : c.unchanged ? "unchanged" : "",
            c.exists === false ? "no longer exists" : "",
            c.visible_now === false ? "no longer visible to the asker" : c.visible_now ? "still visible to the asker" : ""].filter(Boolean).join(" · ")),
          node("p", { className: "snippet" }, str(pick(c, "text", "snippet")))))));
      out.hidden = false;
      out.scrollIntoView({ block: "nearest" });
    } catch (e) { shown(e); }
  }

  // view as: exactly what another principal would be shown
  async function viewAs() {
    const body = { user: $("v-user").value.trim(), query: $("v-question").value.trim(), what: $("v-what").value };
    $("viewas-results").replaceChildren();
    $("viewas-answer").hidden = true;
    try {
      const r = await api("POST", "/v1/admin/view-as", body);
      const answer = r.answer && typeof r.answer === "object" ? r.answer : null;
      if (answer) {
        $("viewas-answer").textContent = str(answer.answer);
        $("viewas-answer").classList.toggle("refused", !!answer.refused);
        $("viewas-answer").hidden = false;
      }
      const hits = answer ? rowsOf(answer, "sources") : rowsOf(r, "hits");
      $("viewas-results").replaceChildren(...hits.map((h) => node("li", { className: "hit" },
        node("div", { className: "title" }, str(pick(h, "title", "external_id"))),
        node("div", { className: "from" }, [str(h.source), str(h.external_id)].filter(Boolean).join(" · ")),
        node("p", { className: "snippet" }, str(pick(h, "text", "snippet"))))));
      notify("Shown as " + str(r.user) + ": " + hits.length + (answer ? " source(s)" : " result(s)") +
        " (audited as an impersonation, row #" + str(r.impersonation_audit_id) + ").");
    } catch (e) { shown(e); }
  }

  // -- events ----------------------------------------------------------------------------------------
  function onSubmit(id, handler) {
    $(id).addEventListener("submit", (ev) => { ev.preventDefault(); handler(); });
  }
  onSubmit("login-form", () => {
    const key = $("api-key").value.trim();
    if (key) signIn(key); else showLogin("Enter an API key.");
  });
  onSubmit("principal-form", savePrincipal);
  onSubmit("key-form", createKey);
  onSubmit("audit-form", () => searchAudit(false).catch(shown));
  onSubmit("feedback-form", () => refresh("feedback"));
  onSubmit("viewas-form", viewAs);
  $("logout").addEventListener("click", signOut);
  $("tabs").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-view]");
    if (b) select(b.dataset.view);
  });
  for (const b of document.querySelectorAll("button[data-refresh]")) {
    b.addEventListener("click", () => refresh(b.dataset.refresh));
  }
  $("audit-more").addEventListener("click", () => searchAudit(true).catch(shown));
  $("audit-verify").addEventListener("click", verifyAudit);
  $("new-key-done").addEventListener("click", () => { $("new-key").hidden = true; $("new-key-secret").textContent = ""; });
  $("new-key-copy").addEventListener("click", () => {
    if (navigator.clipboard) navigator.clipboard.writeText($("new-key-secret").textContent).catch(() => {});
  });

  function notAdminSession(who) {  // signed in at the identity provider, not in an admin group: may sign out
    showLogin("Signed in as " + str(who.user) + ". " + NOT_ADMIN);
    $("logout").hidden = false;
  }

  // -- start: a saved key, else the identity provider's session, else the sign-in form -----------------
  const oidc = document.body.dataset.oidc === "on";
  $("oidc").hidden = !oidc;
  const saved = storedKey();
  if (saved) {
    signIn(saved);
  } else if (oidc) {
    // GET /auth/session: who the session cookie signs in (401 without one)
    request("GET", "/auth/session").then((who) => who.admin
      ? showAdmin("signed in as " + str(who.user))
      : notAdminSession(who), () => showLogin(""));
  } else {
    showLogin("");
  }
})();
