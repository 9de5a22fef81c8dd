// aigw console: every page's data, loaded from the same-origin admin APIs (/api/...).
// No framework and no innerHTML with data: every element is built with h()/s() and text nodes.
"use strict";
(() => {
  const B = document.body;
  const PAGE = B.dataset.page;
  const ADMIN = B.dataset.role === "admin";
  const ME = B.dataset.userId;
  const ME_NAME = B.dataset.username;
  const CSRF = document.querySelector('meta[name="csrf-token"]').content;
  const root = document.getElementById("app");
  const flashBox = document.getElementById("flash");
  const PAGE_SIZE = 20;
  const timers = new Set();

  // ------------------------------------------------------------------ DOM helpers

  function put(el, k, v) {
    if (v === null || v === undefined || v === false) return;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.setAttribute("class", v);
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  function kids(el, list) {
    for (const c of list.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) put(el, k, v);
    return kids(el, children);
  }
  function s(tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) put(el, k, v);
    return kids(el, children);
  }
  function show(...nodes) { root.replaceChildren(...nodes.flat()); }
  function flash(msg, error) {
    const m = h("div", { class: "msg" + (error ? " error" : "") }, msg);
    flashBox.replaceChildren(m);
    if (!error) setTimeout(() => m.remove(), 6000);
  }
  function every(ms, fn) {
    const t = setInterval(fn, ms);
    timers.add(t);
    return () => { clearInterval(t); timers.delete(t); };
  }
  function badge(text, cls) { return h("span", { class: "badge " + (cls || text) }, text); }

  // ------------------------------------------------------------------ formatting

  function money(m) {
    if (m === null || m === undefined) return "—";
    const usd = m / 1e6;
    return "$" + usd.toFixed(m !== 0 && Math.abs(m) < 10000 ? 6 : 4);
  }
  function num(n) { return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"); }
  function when(iso) { return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC") : "—"; }
  function duration(a, b) {
    if (!a || !b) return "—";
    const ms = Date.parse(b) - Date.parse(a);
    return ms < 1000 ? ms + " ms" : (ms / 1000).toFixed(2) + " s";
  }
  function usdToMicros(text) {
    const v = Number(String(text).trim());
    if (!Number.isFinite(v) || v < 0) throw new Error("enter an amount in USD, e.g. 25 or 0.5");
    return Math.round(v * 1e6);
  }
  function day(d) { return d.toISOString().slice(0, 10); }

  // ------------------------------------------------------------------ the admin APIs, same origin

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || "request failed (" + status + ")");
      this.status = status;
      this.body = body;
    }
  }
  async function api(method, path, body, params) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== null && v !== undefined) url.searchParams.set(k, v);
    const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" };
    if (method !== "GET") init.headers["X-CSRF-Token"] = CSRF;
    if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    const r = await fetch(url, init);
    if (r.status === 401) { location.assign("/"); throw new ApiError(401, null); }
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text.slice(0, 200) }; }
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }
  const enc = encodeURIComponent;
  function errText(e) {
    const v = e.body && e.body.validations && e.body.validations.length ? " (" + e.body.validations.map((x) => x.field + ": " + x.detail).join("; ") + ")" : "";
    return e.message + v;
  }
  // Run a change; report success or the API's error; then refresh.
  async function change(what, fn, after) {
    try {
      const out = await fn();
      flash(what);
      if (after) await after(out);
      return out;
    } catch (e) {
      if (e.status !== 401) flash(errText(e), true);
      return undefined;
    }
  }
  function failed(e) { return h("p", { class: "error", role: "alert" }, errText(e)); }

  // ------------------------------------------------------------------ lists: filter + pages, client side

  // columns: [{label, cell(row) -> node|string, num?}]; rows: array; text(row) -> what the filter searches
  function listView(opts) {
    const wrap = h("div", { class: "list", "data-list": opts.name });
    let pageNo = 0;
    const filter = h("input", { type: "search", placeholder: "Filter…", "aria-label": "Filter " + opts.name, value: opts.initialFilter || "" });
    const body = h("div");
    function render() {
      const q = filter.value.trim().toLowerCase();
      const rows = q ? opts.rows.filter((r) => opts.text(r).toLowerCase().includes(q)) : opts.rows;
      const pages = Math.max(1, Math.ceil(rows.length / (opts.pageSize || PAGE_SIZE)));
      pageNo = Math.min(pageNo, pages - 1);
      const size = opts.pageSize || PAGE_SIZE;
      const shown = rows.slice(pageNo * size, pageNo * size + size);
      const table = h("table", {},
        h("thead", {}, h("tr", {}, opts.columns.map((c) => h("th", { class: c.num ? "num" : null }, c.label)))),
        h("tbody", {}, shown.length ? shown.map((r) => {
          const tr = h("tr", opts.rowAttrs ? opts.rowAttrs(r) : {}, opts.columns.map((c) => h("td", { class: c.num ? "num" : null, "data-col": c.key || null }, c.cell(r))));
          return tr;
        }) : h("tr", {}, h("td", { colspan: opts.columns.length, class: "muted" }, opts.empty || "Nothing here yet."))));
      const pager = h("div", { class: "pager" },
        h("button", { type: "button", disabled: pageNo === 0, onclick: () => { pageNo--; render(); } }, "‹ Prev"),
        h("span", { class: "muted" }, `Page ${pageNo + 1} of ${pages} · ${rows.length} ${opts.name}`),
        h("button", { type: "button", disabled: pageNo >= pages - 1, onclick: () => { pageNo++; render(); } }, "Next ›"));
      body.replaceChildren(table, pager);
      if (opts.onPage) opts.onPage(shown);
    }
    filter.addEventListener("input", () => { pageNo = 0; render(); });
    wrap.append(h("div", { class: "toolbar" }, filter), body);
    render();
    wrap.refresh = (rows) => { opts.rows = rows; render(); };
    return wrap;
  }

  function field(label, input) { return h("label", {}, label, input); }
  function form(onsubmit, ...children) {
    const f = h("form", { class: "inline" }, ...children);
    f.addEventListener("submit", (ev) => { ev.preventDefault(); onsubmit(f); });
    return f;
  }
  function val(f, name) { const el = f.elements.namedItem(name); return el ? (el.type === "checkbox" ? el.checked : el.value.trim()) : ""; }
  function params() { return new URLSearchParams(location.search); }
  function go(query) {
    const u = new URL(location.href);
    u.search = new URLSearchParams(query).toString();
    history.pushState(null, "", u);
    route();
  }
  window.addEventListener("popstate", () => route());

  async function userMap() {
    if (!ADMIN) return { [ME]: ME_NAME };
    const out = {};
    for (const u of (await api("GET", "/api/v2/users")).users) out[u.id] = u.username;
    return out;
  }
  async function groupMap() {
    const out = {};
    if (ADMIN) for (const g of (await api("GET", "/api/v2/groups")).groups) out[g.id] = g.name;
    else for (const g of (await api("GET", "/api/v2/users/me")).groups) out[g.id] = g.name;
    return out;
  }

  // ================================================================== Providers

  const TYPES = B.dataset.providerTypes.split(" ");  // aigw_common.llm's provider types, written by the server
  // Provider settings by type, [field, secret], from aigw_common.llm (written by the server). Secrets are write-only.
  const SETTINGS = JSON.parse(B.dataset.providerSettings);
  const TIMEOUTS = ["connect_timeout", "first_byte_timeout", "idle_timeout"];
  // The settings inputs for a type; current (masked) values are placeholders, never values to resend.
  function settingsFields(type, current) {
    const fields = [...(SETTINGS[type] || []), ...TIMEOUTS.map((t) => [t, false])];
    return fields.map(([name, secret]) => field(name.replace(/_/g, " ") + (secret ? " (write-only)" : ""),
      h("input", { name: "s_" + name, type: secret ? "password" : "text", autocomplete: "off", size: 14,
        placeholder: (current && current[name]) || (TIMEOUTS.includes(name) ? "e.g. 30s" : ""), value: !secret && current && current[name] ? current[name] : "" })));
  }
  // Settings typed into a form: only non-empty fields (on edit, an untouched field keeps its stored value).
  function settingsOf(f, current) {
    const out = {};
    for (const el of f.querySelectorAll("input[name^=s_]")) {
      const k = el.name.slice(2), v = el.value.trim();
      if (v && v !== (current || {})[k]) out[k] = v;
    }
    return out;
  }

  async function providersPage() {
    if (!ADMIN) return memberProviders();
    const data = await api("GET", "/api/v2/ai/providers");
    const sel = params().get("provider");
    const settingsBox = h("span", { class: "settings" }, settingsFields("openai"));
    const createForm = form(async (f) => {
      const body = { name: val(f, "name"), type: val(f, "type"), base_url: val(f, "base_url"), enabled: val(f, "enabled"), allow_byok: val(f, "allow_byok") };
      if (val(f, "display_name")) body.display_name = val(f, "display_name");
      if (val(f, "api_key")) body.keys = [val(f, "api_key")];
      const st = settingsOf(f);
      if (Object.keys(st).length) body.settings = st;
      await change(`Provider ${body.name} created`, () => api("POST", "/api/v2/ai/providers", body), (p) => go({ provider: p.name }));
    },
      field("Name", h("input", { name: "name", required: true, pattern: "[a-z0-9]+(-[a-z0-9]+)*", placeholder: "openai" })),
      field("Type", h("select", { name: "type", onchange: (ev) => settingsBox.replaceChildren(...settingsFields(ev.target.value)) }, TYPES.map((t) => h("option", { value: t }, t)))),
      field("Base URL", h("input", { name: "base_url", required: true, type: "url", size: 34, placeholder: "https://api.openai.com/v1" })),
      field("Display name", h("input", { name: "display_name" })),
      field("First key (write-only)", h("input", { name: "api_key", type: "password", autocomplete: "off" })),
      field("Enabled", h("input", { name: "enabled", type: "checkbox", checked: true })),
      field("BYOK", h("input", { name: "allow_byok", type: "checkbox", checked: true })),
      settingsBox,
      h("button", { class: "primary", type: "submit" }, "Create provider"));
    // Each shown provider's pool at a glance (valid / cooling / revoked), kept live.
    const healthCells = {};
    let shownProviders = [];
    async function summarize(p) {
      const cell = healthCells[p.id];
      if (!cell || !p.keys.length) return;
      try {
        const hp = await api("GET", "/api/v2/ai/providers/" + enc(p.name) + "/keys/health");
        const n = {};
        for (const k of hp.keys) n[k.state] = (n[k.state] || 0) + 1;
        cell.replaceChildren(...["valid", "cooling", "revoked"].filter((st) => n[st]).map((st) => [badge(`${n[st]} ${st}`, st), " "]).flat());
        cell.dataset.health = ["valid", "cooling", "revoked"].map((st) => `${st}=${n[st] || 0}`).join(",");
      } catch (e) {
        cell.replaceChildren(`${p.keys.length} (health unavailable)`);
      }
    }
    every(5000, () => shownProviders.forEach(summarize));
    const list = listView({
      name: "providers", rows: data.providers, text: (p) => [p.name, p.display_name, p.type, p.base_url].join(" "),
      onPage: (shown) => { shownProviders = shown; shown.forEach(summarize); },
      rowAttrs: (p) => ({ "data-provider": p.name }),
      columns: [
        { label: "Name", cell: (p) => h("a", { href: "?provider=" + enc(p.name), onclick: (ev) => { ev.preventDefault(); go({ provider: p.name }); } }, p.name) },
        { label: "Display name", cell: (p) => p.display_name || "—" },
        { label: "Type", cell: (p) => p.type },
        { label: "Base URL", cell: (p) => h("code", {}, p.base_url) },
        { label: "State", key: "state", cell: (p) => badge(p.enabled ? "enabled" : "disabled") },
        { label: "BYOK", cell: (p) => (p.allow_byok ? "allowed" : "off") },
        { label: "Keys", key: "keys", cell: (p) => (healthCells[p.id] = healthCells[p.id] || h("span", {}, String(p.keys.length))) },
        { label: "", cell: (p) => [
          h("button", { type: "button", onclick: () => change(`Provider ${p.name} ${p.enabled ? "disabled" : "enabled"}`, () => api("PATCH", "/api/v2/ai/providers/" + enc(p.name), { enabled: !p.enabled }), route) }, p.enabled ? "Disable" : "Enable"), " ",
          h("button", { type: "button", class: "danger", onclick: () => confirm(`Delete provider ${p.name}? Its keys and users' keys for it go too.`) && change(`Provider ${p.name} deleted`, () => api("DELETE", "/api/v2/ai/providers/" + enc(p.name)), () => go({})) }, "Delete")] },
      ],
    });
    const nodes = [list, h("h2", {}, "New provider"), createForm];
    const p = sel && data.providers.find((x) => x.name === sel || x.id === sel);
    if (p) nodes.unshift(providerDetail(p));
    show(nodes);
  }

  function providerDetail(p) {
    const ref = "/api/v2/ai/providers/" + enc(p.name);
    const keysBody = h("tbody");
    const healthNote = h("p", { class: "muted" }, "Checking key health…");
    const edit = form(async (f) => {
      const body = { display_name: val(f, "display_name"), base_url: val(f, "base_url"), enabled: val(f, "enabled"), allow_byok: val(f, "allow_byok") };
      const st = settingsOf(f, p.settings);
      if (Object.keys(st).length) body.settings = st;
      await change(`Provider ${p.name} saved`, () => api("PATCH", ref, body), route);
    },
      field("Display name", h("input", { name: "display_name", value: p.display_name })),
      field("Base URL", h("input", { name: "base_url", type: "url", size: 40, value: p.base_url })),
      field("Enabled", h("input", { name: "enabled", type: "checkbox", checked: p.enabled })),
      field("BYOK", h("input", { name: "allow_byok", type: "checkbox", checked: p.allow_byok })),
      settingsFields(p.type, p.settings),
      h("button", { type: "submit" }, "Save"));
    const addKey = form(async (f) => {
      const body = { api_key: val(f, "api_key") };
      if (val(f, "position") !== "") body.position = Number(val(f, "position"));
      await change("Key added", () => api("POST", ref + "/keys", body), route);
    },
      field("New key (write-only)", h("input", { name: "api_key", type: "password", required: true, autocomplete: "off", size: 30 })),
      field("Position", h("input", { name: "position", type: "number", min: 0, size: 4 })),
      h("button", { class: "primary", type: "submit" }, "Add key"));
    let keys = p.keys.slice().sort((a, b) => a.position - b.position);
    let health = {};
    function renderKeys() {
      keysBody.replaceChildren(...(keys.length ? keys.map((k) => {
        const hk = health[k.id];
        const state = hk ? hk.state : "unknown";
        // until/last_status always; why/since/next re-check where keypool reports them
        const why = hk ? [hk.until ? "until " + when(hk.until) : "", hk.why || "", hk.last_status ? "last status " + hk.last_status : "",
          hk.since ? "since " + when(hk.since) : "", hk.next_check_at ? `next re-check ${when(hk.next_check_at)}${hk.checks ? ` (${hk.checks} so far)` : ""}` : ""].filter(Boolean).join(" · ") : "";
        return h("tr", { "data-key-id": k.id, "data-state": state },
          h("td", { class: "num" }, String(k.position)),
          h("td", {}, h("code", {}, k.hint)),
          h("td", { "data-col": "state" }, badge(state, state), why ? h("div", { class: "muted" }, why) : null),
          h("td", { class: "num" }, hk ? `${hk.successes_1m} ok / ${hk.failures_1m} failed` : "—"),
          h("td", {}, when(k.created_at)),
          h("td", {},
            h("button", { type: "button", onclick: () => resetKey(k) }, "Reset"), " ",
            h("button", { type: "button", class: "danger", onclick: () => confirm("Remove this key from the pool?") && change("Key removed", () => api("DELETE", ref + "/keys/" + enc(k.id)), route) }, "Remove")));
      }) : [h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No keys: add one below."))]));
    }
    async function resetKey(k) {
      try {
        const out = await api("POST", ref + "/keys/" + enc(k.id) + "/reset");
        if (out && out.state) health[k.id] = out;
        flash("Key reset: the gateways use it again");
        renderKeys();
      } catch (e) {
        if (e.status === 404 && !(e.body && /key/i.test(e.body.message || ""))) flash("This keypool cannot reset keys yet (no reset route).", true);
        else if (e.status !== 401) flash(errText(e), true);
      }
    }
    async function poll() {
      try {
        const hp = await api("GET", ref + "/keys/health");
        health = {};
        for (const k of hp.keys) health[k.id] = k;
        healthNote.textContent = "Live key health, refreshed every 2 s. Last: " + new Date().toLocaleTimeString();
        healthNote.className = "muted";
      } catch (e) {
        healthNote.textContent = "Key health unavailable: " + errText(e);
        healthNote.className = "error";
      }
      renderKeys();
    }
    renderKeys();
    poll();
    every(2000, poll);
    return h("section", { class: "card", "data-detail": p.name },
      h("h2", {}, `${p.display_name || p.name} `, badge(p.enabled ? "enabled" : "disabled"), " ", h("small", { class: "muted" }, `${p.type} · ${p.id}`)),
      edit,
      h("h3", {}, "Keys"), healthNote,
      h("table", { "data-keys": p.name }, h("thead", {}, h("tr", {}, ["#", "Key", "State", "Last minute", "Added", ""].map((t) => h("th", {}, t)))), keysBody),
      addKey,
      h("p", {}, h("a", { href: "/providers", onclick: (ev) => { ev.preventDefault(); go({}); } }, "‹ All providers")));
  }

  async function memberProviders() {
    const data = await api("GET", "/api/v2/users/me/ai/provider-configs");
    show(h("p", { class: "muted" }, "Providers are managed by admins. These are the ones you may use; store your own key for BYOK on the People page."),
      listView({
        name: "providers", rows: data.providers, text: (p) => p.name + " " + p.display_name,
        rowAttrs: (p) => ({ "data-provider": p.name }),
        columns: [
          { label: "Name", cell: (p) => p.name }, { label: "Display name", cell: (p) => p.display_name || "—" },
          { label: "Type", cell: (p) => p.type }, { label: "Centralised", cell: (p) => (p.centralized ? "yes" : "no") },
          { label: "BYOK", cell: (p) => (p.byok ? "allowed" : "off") }, { label: "Your key", cell: (p) => (p.has_key ? "stored" : "—") },
        ],
      }));
  }

  // ================================================================== People

  async function peoplePage() {
    const sel = params();
    if (!ADMIN) return show(await userPanel(ME, true));
    const [users, groups] = await Promise.all([api("GET", "/api/v2/users"), api("GET", "/api/v2/groups")]);
    const nodes = [];
    if (sel.get("user")) {
      const u = users.users.find((x) => x.id === sel.get("user") || x.username === sel.get("user"));
      if (u) nodes.push(await userPanel(u.id, false, u));
    }
    if (sel.get("group")) {
      const g = groups.groups.find((x) => x.id === sel.get("group") || x.name === sel.get("group"));
      if (g) nodes.push(groupPanel(g));
    }
    nodes.push(h("h2", {}, "Users"), listView({
      name: "users", rows: users.users, text: (u) => [u.username, u.email || "", u.roles.join(" "), u.groups.map((g) => g.name).join(" ")].join(" "),
      rowAttrs: (u) => ({ "data-user": u.username }),
      columns: [
        { label: "Username", cell: (u) => h("a", { href: "?user=" + enc(u.id), onclick: (ev) => { ev.preventDefault(); go({ user: u.id }); } }, u.username) },
        { label: "Email", cell: (u) => u.email || "—" },
        { label: "Roles", cell: (u) => u.roles.join(", ") },
        { label: "Groups", cell: (u) => u.groups.map((g) => g.name).join(", ") || "—" },
        { label: "Created", cell: (u) => when(u.created_at) },
        { label: "", cell: (u) => u.id === ME ? "" : h("button", { type: "button", class: "danger", onclick: () => confirm(`Delete user ${u.username}? Their tokens and keys go too.`) && change(`User ${u.username} deleted`, () => api("DELETE", "/api/v2/users/" + enc(u.id)), () => go({})) }, "Delete") },
      ],
    }), form(async (f) => {
      const body = { username: val(f, "username"), roles: [val(f, "role")] };
      if (val(f, "email")) body.email = val(f, "email");
      await change(`User ${body.username} created`, () => api("POST", "/api/v2/users", body), (u) => go({ user: u.id }));
    },
      field("Username", h("input", { name: "username", required: true })),
      field("Email", h("input", { name: "email", type: "email" })),
      field("Role", h("select", { name: "role" }, ["member", "admin", "owner"].map((r) => h("option", { value: r }, r)))),
      h("button", { class: "primary", type: "submit" }, "Create user")));
    nodes.push(h("h2", {}, "Groups"), listView({
      name: "groups", rows: groups.groups, text: (g) => g.name + " " + g.members.map((m) => m.username).join(" "),
      rowAttrs: (g) => ({ "data-group": g.name }),
      columns: [
        { label: "Name", cell: (g) => h("a", { href: "?group=" + enc(g.id), onclick: (ev) => { ev.preventDefault(); go({ group: g.id }); } }, g.name) },
        { label: "Members", cell: (g) => g.members.map((m) => m.username).join(", ") || "—" },
        { label: "Created", cell: (g) => when(g.created_at) },
        { label: "", cell: (g) => h("button", { type: "button", class: "danger", onclick: () => confirm(`Delete group ${g.name}?`) && change(`Group ${g.name} deleted`, () => api("DELETE", "/api/v2/groups/" + enc(g.id)), () => go({})) }, "Delete") },
      ],
    }), form(async (f) => {
      await change(`Group ${val(f, "name")} created`, () => api("POST", "/api/v2/groups", { name: val(f, "name") }), (g) => go({ group: g.id }));
    }, field("Name", h("input", { name: "name", required: true })), h("button", { class: "primary", type: "submit" }, "Create group")));
    show(nodes);
  }

  function groupPanel(g) {
    const ref = "/api/v2/groups/" + enc(g.id);
    return h("section", { class: "card", "data-detail": g.name },
      h("h2", {}, "Group ", g.name),
      form(async (f) => change("Group renamed", () => api("PATCH", ref, { name: val(f, "name") }), route),
        field("Name", h("input", { name: "name", value: g.name, required: true })), h("button", { type: "submit" }, "Rename")),
      h("h3", {}, "Members"),
      h("table", {}, h("tbody", {}, g.members.length ? g.members.map((m) => h("tr", {}, h("td", {}, m.username),
        h("td", {}, h("button", { type: "button", class: "danger", onclick: () => change(`${m.username} removed`, () => api("DELETE", ref + "/members/" + enc(m.id)), route) }, "Remove")))) : h("tr", {}, h("td", { class: "muted" }, "No members.")))),
      form(async (f) => change(`${val(f, "user")} added`, () => api("PUT", ref + "/members/" + enc(val(f, "user"))), route),
        field("Add member (username)", h("input", { name: "user", required: true })), h("button", { class: "primary", type: "submit" }, "Add")),
      h("p", {}, h("a", { href: "/people", onclick: (ev) => { ev.preventDefault(); go({}); } }, "‹ All people")));
  }

  async function userPanel(id, self, known) {
    const ref = "/api/v2/users/" + (self ? "me" : enc(id));
    const [u, tokens, keys] = await Promise.all([known ? known : api("GET", ref), api("GET", ref + "/tokens"), api("GET", ref + "/ai/provider-keys")]);
    const secretBox = h("div");
    let configs = [];
    try { configs = (await api("GET", ref + "/ai/provider-configs")).providers.filter((p) => p.byok); } catch (e) { configs = []; }
    const head = [h("h2", {}, self ? "Your account" : "User " + u.username),
      h("p", {}, h("b", {}, u.username), " · ", u.email || "no email", " · roles: ", u.roles.join(", "), " · groups: ", u.groups.map((g) => g.name).join(", ") || "none")];
    if (ADMIN && !self) {
      head.push(form(async (f) => change("Roles saved", () => api("PATCH", ref, { roles: [val(f, "role")] }), route),
        field("Role", h("select", { name: "role" }, ["member", "admin", "owner"].map((r) => h("option", { value: r, selected: u.roles.includes(r) }, r)))),
        h("button", { type: "submit" }, "Save role")));
    }
    return h("section", { class: "card", "data-detail": u.username }, head,
      h("h3", {}, "API tokens"),
      listView({
        name: "tokens", rows: tokens.tokens, text: (t) => t.name + " " + t.hint, pageSize: 10,
        rowAttrs: (t) => ({ "data-token-id": t.id }),
        columns: [
          { label: "Name", cell: (t) => t.name || "—" }, { label: "Token", cell: (t) => h("code", {}, t.hint) },
          { label: "Scope", cell: (t) => t.scope || "—" },
          { label: "Created", cell: (t) => when(t.created_at) }, { label: "Expires", cell: (t) => when(t.expires_at) },
          { label: "", cell: (t) => h("button", { type: "button", class: "danger", onclick: () => confirm("Revoke this token? Clients using it stop working.") && change("Token revoked", () => api("DELETE", ref + "/tokens/" + enc(t.id)), route) }, "Revoke") },
        ],
      }),
      form(async (f) => {
        const body = { name: val(f, "name") };
        if (val(f, "scope") === "admin") body.scope = "admin";
        if (val(f, "expires")) body.expires_at = new Date(val(f, "expires") + "T00:00:00Z").toISOString();
        const t = await change("Token created: copy it now, it is shown only once", () => api("POST", ref + "/tokens", body));
        if (t) secretBox.replaceChildren(h("p", {}, "New token ", h("b", {}, t.name || ""), " (shown once):"), h("div", { class: "secret", "data-new-token": "" }, t.token));
      },
        field("Name", h("input", { name: "name" })),
        field("Scope", h("select", { name: "scope" }, h("option", { value: "gateway" }, "gateway (LLM calls)"), h("option", { value: "admin" }, "admin (console and APIs)"))),
        field("Expires", h("input", { name: "expires", type: "date" })),
        h("button", { class: "primary", type: "submit" }, "Create token")),
      secretBox,
      h("h3", {}, "Own provider keys (BYOK)"),
      h("table", {}, h("thead", {}, h("tr", {}, ["Provider", "Key", "Updated", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, keys.provider_keys.length ? keys.provider_keys.map((k) => h("tr", { "data-byok": k.provider_name },
          h("td", {}, k.provider_name), h("td", {}, h("code", {}, k.hint)), h("td", {}, when(k.updated_at)),
          h("td", {}, h("button", { type: "button", class: "danger", onclick: () => change("Key deleted", () => api("DELETE", ref + "/ai/provider-keys/" + enc(k.provider_name)), route) }, "Delete")))) : h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No stored keys.")))),
      form(async (f) => change("Key stored", () => api("PUT", ref + "/ai/provider-keys/" + enc(val(f, "provider")), { api_key: val(f, "api_key") }), route),
        field("Provider", configs.length ? h("select", { name: "provider" }, configs.map((p) => h("option", { value: p.name }, p.name))) : h("input", { name: "provider", required: true })),
        field("Key (write-only)", h("input", { name: "api_key", type: "password", required: true, autocomplete: "off" })),
        h("button", { class: "primary", type: "submit" }, "Store key")),
      self ? chatsPanel() : null,
      ADMIN && !self ? h("p", {}, h("a", { href: "/people", onclick: (ev) => { ev.preventDefault(); go({}); } }, "‹ All people")) : null);
  }

  // Your own chats (chatd lists only the caller's); a chat opens with its messages.
  function chatsPanel() {
    const box = h("div", { "data-chats": "" }, h("p", { class: "muted" }, "Loading chats…"));
    const cursors = [];
    let cursor = "";
    async function load() {
      try {
        const data = await api("GET", "/api/experimental/chats", undefined, { limit: 20, cursor });
        box.replaceChildren(h("table", {}, h("thead", {}, h("tr", {}, ["Title", "Status", "Updated"].map((t) => h("th", {}, t)))),
          h("tbody", {}, data.chats.length ? data.chats.map((c) => h("tr", { class: "clickable", "data-chat": c.id, onclick: () => openChat(c.id) },
            h("td", {}, c.title || "(untitled)"), h("td", {}, badge(c.status, c.status === "idle" ? "ok" : c.status)), h("td", {}, when(c.updated_at || c.created_at)))) : h("tr", {}, h("td", { colspan: 3, class: "muted" }, "No chats.")))),
          h("div", { class: "pager" },
            h("button", { type: "button", disabled: !cursor, onclick: () => { cursor = cursors.pop() || ""; load(); } }, "‹ Newer"),
            h("button", { type: "button", disabled: !data.next_cursor, onclick: () => { cursors.push(cursor); cursor = data.next_cursor; load(); } }, "Older ›")));
      } catch (e) {
        if (e.status !== 401) box.replaceChildren(h("p", { class: "muted" }, "Chats unavailable: " + errText(e)));
      }
    }
    async function openChat(id) {
      try {
        const c = await api("GET", "/api/experimental/chats/" + enc(id));
        box.replaceChildren(h("p", {}, h("a", { href: "#", onclick: (ev) => { ev.preventDefault(); load(); } }, "‹ All chats")),
          h("h3", {}, c.title || "(untitled)", " ", badge(c.status, c.status === "idle" ? "ok" : c.status)),
          c.messages.map((m) => h("div", { class: "card", "data-message": m.id }, h("b", {}, m.role), " ", h("small", { class: "muted" }, when(m.created_at)), h("pre", {}, m.content))));
      } catch (e) {
        if (e.status !== 401) flash(errText(e), true);
      }
    }
    load();
    return [h("h3", {}, "Your chats"), box];
  }

  // ================================================================== Budgets

  function budgetBar(b) {
    const limit = b.spend_limit_micros;
    const pct = (x) => (limit > 0 ? Math.min(100, (100 * x) / limit) : x > 0 ? 100 : 0);
    const bar = h("div", { class: "bar" + (b.spent_micros >= limit ? " over" : ""), title: `${money(b.spent_micros)} spent, ${money(b.reserved_micros)} reserved of ${money(limit)}` });
    const spent = h("span", { class: "spent" });
    const reserved = h("span", { class: "reserved" });
    spent.style.width = pct(b.spent_micros) + "%";
    reserved.style.left = pct(b.spent_micros) + "%";
    reserved.style.width = Math.max(0, Math.min(100 - pct(b.spent_micros), pct(b.reserved_micros))) + "%";
    bar.append(spent, reserved);
    return bar;
  }

  async function budgetsPage() {
    let groups, users;
    if (ADMIN) {
      const [g, u] = await Promise.all([api("GET", "/api/v2/groups"), api("GET", "/api/v2/users")]);
      groups = g.groups.map((x) => ({ id: x.id, name: x.name }));
      users = u.users.map((x) => ({ id: x.id, name: x.username }));
    } else {
      const me = await api("GET", "/api/v2/users/me");
      groups = me.groups.map((x) => ({ id: x.id, name: x.name }));
      users = [{ id: me.id, name: me.username }];
    }
    const sections = [];
    const visible = [];
    function table(scope, rows) {
      const cells = {};
      const limitCells = {};
      const list = listView({
        name: scope === "group" ? "groups" : "users", rows, text: (r) => r.name, pageSize: 15,
        rowAttrs: (r) => ({ "data-budget": scope + ":" + r.name }),
        columns: [
          { label: scope === "group" ? "Group" : "User", cell: (r) => r.name },
          { label: "Spent / limit", key: "bar", cell: (r) => (cells[r.id] = cells[r.id] || h("div", { class: "muted" }, "…")) },
          { label: "", cell: (r) => (ADMIN ? form(async (f) => {
            let micros;
            try { micros = usdToMicros(val(f, "usd")); } catch (e) { flash(e.message, true); return; }
            await change(`Budget of ${r.name} set`, () => api("PUT", `/api/v2/${scope}s/${enc(r.id)}/ai/budget`, { spend_limit_micros: micros, period: "month" }), () => loadOne(scope, r, cells));
          }, field("Monthly limit (USD)", h("input", { name: "usd", size: 8, required: true, inputmode: "decimal" })),
            h("button", { type: "submit" }, "Set"),
            h("button", { type: "button", class: "danger", onclick: () => change(`Budget of ${r.name} cleared`, () => api("DELETE", `/api/v2/${scope}s/${enc(r.id)}/ai/budget`), () => loadOne(scope, r, cells)) }, "Clear")) : "") },
          { label: "Rate limits", key: "limits", cell: (r) => (limitCells[r.id] = limitCells[r.id] || h("div", { class: "muted" }, "…")) },
        ],
        onPage: (shown) => {
          visible.splice(0, visible.length, ...visible.filter((v) => v.scope !== scope), ...shown.map((r) => ({ scope, r, cells })));
          for (const r of shown) { loadOne(scope, r, cells); loadLimits(scope, r, limitCells); }
        },
      });
      return list;
    }
    sections.push(h("p", { class: "muted" }, "Dark: spent this period. Light: reserved by requests in flight. Refreshed every 3 s."));
    sections.push(h("h2", {}, "Groups"), table("group", groups));
    sections.push(h("h2", {}, ADMIN ? "Users" : "You"), table("user", users));
    show(sections);
    every(3000, () => { for (const v of visible) loadOne(v.scope, v.r, v.cells); });
  }

  async function loadOne(scope, r, cells) {
    const cell = (cells[r.id] = cells[r.id] || h("div"));
    try {
      const b = await api("GET", `/api/v2/${scope}s/${enc(r.id)}/ai/budget`);
      const tr = cell.closest("tr");
      if (tr) Object.assign(tr.dataset, { spent: b.spent_micros, reserved: b.reserved_micros, limit: b.spend_limit_micros });
      cell.replaceChildren(budgetBar(b),
        h("div", { class: "muted" }, `${money(b.spent_micros)} spent · ${money(b.reserved_micros)} reserved · limit ${money(b.spend_limit_micros)} per ${b.period} (until ${when(b.period_end)})`));
    } catch (e) {
      const tr = cell.closest("tr");
      if (tr) { delete tr.dataset.spent; delete tr.dataset.reserved; delete tr.dataset.limit; }
      cell.replaceChildren(h("span", { class: e.status === 404 ? "muted" : "error" }, e.status === 404 ? "No budget" : errText(e)));
    }
  }

  // Rate limits (requests and tokens per minute, concurrent requests) of a user or group; null = none.
  const LIMITS = [["requests_per_minute", "req/min"], ["tokens_per_minute", "tokens/min"], ["concurrent_requests", "concurrent"]];
  async function loadLimits(scope, r, cells) {
    const cell = (cells[r.id] = cells[r.id] || h("div"));
    const ref = `/api/v2/${scope}s/${enc(r.id)}/ai/limits`;
    let cur = null;
    try {
      cur = await api("GET", ref);
    } catch (e) {
      if (e.status !== 404) { cell.replaceChildren(h("span", { class: "error" }, errText(e))); return; }
    }
    const shown = cur ? LIMITS.filter(([k]) => cur[k] !== null && cur[k] !== undefined).map(([k, l]) => `${num(cur[k])} ${l}`).join(" · ") : "";
    cell.replaceChildren(h("div", { "data-limits": shown || "none" }, shown || h("span", { class: "muted" }, "No limits")),
      ADMIN ? form(async (f) => {
        const body = {};
        for (const [k] of LIMITS) body[k] = val(f, k) === "" ? null : Number(val(f, k));
        await change(`Limits of ${r.name} saved`, () => api("PUT", ref, body), () => loadLimits(scope, r, cells));
      }, LIMITS.map(([k, l]) => field(l, h("input", { name: k, type: "number", min: 0, size: 6, value: cur && cur[k] !== null && cur[k] !== undefined ? String(cur[k]) : "" }))),
        h("button", { type: "submit" }, "Save"),
        cur ? h("button", { type: "button", class: "danger", onclick: () => change(`Limits of ${r.name} cleared`, () => api("DELETE", ref), () => loadLimits(scope, r, cells)) }, "Clear") : null) : null);
  }

  // ================================================================== Spend and usage

  const COLORS = ["#2b59c3", "#e07b39", "#3aa76d", "#b8489b", "#c9a227", "#4fb3c8", "#9aa0a6"];

  async function usagePage() {
    const q = params();
    const today = new Date();
    const from = q.get("from") || day(new Date(today.getTime() - 6 * 86400e3));
    const to = q.get("to") || day(today);
    const dim = ["provider", "model", "group", "user"].includes(q.get("by")) ? q.get("by") : "provider";
    const metric = q.get("metric") === "tokens" ? "tokens" : "spend";
    const toolbar = form((f) => go({ from: val(f, "from"), to: val(f, "to"), by: val(f, "by"), metric: val(f, "metric") }),
      field("From", h("input", { name: "from", type: "date", value: from })),
      field("To (inclusive)", h("input", { name: "to", type: "date", value: to })),
      field("Stack by", h("select", { name: "by" }, ["provider", "model", "group", "user"].map((d) => h("option", { value: d, selected: d === dim }, d)))),
      field("Show", h("select", { name: "metric" }, h("option", { value: "spend", selected: metric === "spend" }, "spend"), h("option", { value: "tokens", selected: metric === "tokens" }, "tokens"))),
      h("button", { class: "primary", type: "submit" }, "Apply"),
      [["Today", 0], ["7 days", 6], ["30 days", 29], ["This month", -1]].map(([label, back]) => h("button", { type: "button", onclick: () => {
        const start = back < 0 ? new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), 1)) : new Date(today.getTime() - back * 86400e3);
        go({ from: day(start), to: day(today), by: dim, metric });
      } }, label)));
    const range = { from: from + "T00:00:00Z", to: day(new Date(Date.parse(to + "T00:00:00Z") + 86400e3)) + "T00:00:00Z" };
    show(toolbar, h("p", { class: "muted" }, "Loading usage…"));
    const [users, groups] = await Promise.all([userMap(), groupMap()]);
    const label = (d, k) => (d === "user" ? users[k] || k || "(none)" : d === "group" ? groups[k] || k : k);
    const [total, byDim, byDay, byUser, byModel] = await Promise.all([
      api("GET", "/api/v2/ai/usage", undefined, range),
      api("GET", "/api/v2/ai/usage", undefined, { ...range, group_by: dim }),
      api("GET", "/api/v2/ai/usage", undefined, { ...range, group_by: "day" }),
      api("GET", "/api/v2/ai/usage", undefined, { ...range, group_by: "user" }),
      api("GET", "/api/v2/ai/usage", undefined, { ...range, group_by: "model" }),
    ]);
    const value = (t) => (metric === "spend" ? t.spend_micros : t.input_tokens + t.output_tokens + t.cache_read_tokens + t.cache_write_tokens);
    const top = byDim.rows.filter((r) => r.key).sort((a, b) => value(b) - value(a)).slice(0, COLORS.length - 1);
    const series = await Promise.all(top.map((r) => api("GET", "/api/v2/ai/usage", undefined, { ...range, group_by: "day", [dim]: r.key })));
    const days = [];
    for (let t = Date.parse(range.from); t < Date.parse(range.to) && days.length < 366; t += 86400e3) days.push(day(new Date(t)));
    const stacks = top.map((r, i) => ({ key: r.key, name: label(dim, r.key), color: COLORS[i], byDay: Object.fromEntries(series[i].rows.map((x) => [x.key, x])) }));
    const allByDay = Object.fromEntries(byDay.rows.map((x) => [x.key, x]));
    const zero = { interceptions: 0, spend_micros: 0, input_tokens: 0, output_tokens: 0, cache_read_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0 };
    const other = { key: "", name: "other", color: COLORS[COLORS.length - 1], byDay: {} };
    for (const d of days) {
      const all = allByDay[d] || zero;
      const o = {};
      for (const k of Object.keys(zero)) o[k] = Math.max(0, all[k] - stacks.reduce((acc, st) => acc + ((st.byDay[d] || zero)[k]), 0));
      other.byDay[d] = o;
    }
    if (days.some((d) => value(other.byDay[d]) > 0)) stacks.push(other);
    const t = total.total;
    const stats = h("div", { class: "grid", "data-totals": "" },
      [["Spend", money(t.spend_micros), "spend_micros"], ["Requests", num(t.interceptions), "interceptions"], ["Input tokens", num(t.input_tokens), "input_tokens"],
        ["Output tokens", num(t.output_tokens), "output_tokens"], ["Cache read", num(t.cache_read_tokens), "cache_read_tokens"], ["Cache write", num(t.cache_write_tokens), "cache_write_tokens"],
        ["Reasoning", num(t.reasoning_tokens), "reasoning_tokens"]].map(([l, v, k]) => h("div", { class: "stat", "data-total": k, "data-value": t[k] }, l, h("b", {}, v))));
    const csv = h("button", { type: "button", "data-export": "csv", onclick: () => exportCsv(days, stacks, dim, from, to) }, "Export CSV");
    const topTable = (rows, name, d) => h("table", { "data-top": name }, h("thead", {}, h("tr", {}, h("th", {}, name === "users" ? "User" : "Model"), h("th", { class: "num" }, "Requests"), h("th", { class: "num" }, "Tokens"), h("th", { class: "num" }, "Spend"))),
      h("tbody", {}, rows.length ? rows.sort((a, b) => b.spend_micros - a.spend_micros || b.interceptions - a.interceptions).slice(0, 10).map((r) => h("tr", {}, h("td", {}, label(d, r.key)), h("td", { class: "num" }, num(r.interceptions)),
        h("td", { class: "num" }, num(r.input_tokens + r.output_tokens)), h("td", { class: "num" }, money(r.spend_micros)))) : h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No traffic in this range."))));
    show(toolbar, h("h2", {}, `Totals ${from} – ${to}`), stats,
      h("h2", {}, `${metric === "spend" ? "Spend" : "Tokens"} per day by ${dim} `, csv), chart(days, stacks, value, metric),
      h("div", { class: "cols" }, h("div", {}, h("h2", {}, "Top users"), topTable(byUser.rows, "users", "user")), h("div", {}, h("h2", {}, "Top models"), topTable(byModel.rows, "models", "model"))),
      ADMIN ? await topKeys(range) : null,
      await pricesPanel());
  }

  // Axis labels with as many decimals as the scale needs ($0.0012, not $0.00).
  function axisMoney(v, max) {
    const digits = Math.min(6, Math.max(2, Math.ceil(-Math.log10(max / 1e6)) + 1));
    return "$" + (v / 1e6).toFixed(digits);
  }

  // The price table spend is computed from (USD per million tokens); admins set a model's row.
  async function pricesPanel() {
    let prices;
    try {
      prices = (await api("GET", "/api/v2/ai/prices")).prices;
    } catch (e) {
      return h("p", { class: "error" }, "Prices unavailable: " + errText(e));
    }
    const usd = (m) => (m / 1e6).toFixed(4);
    const cols = [["input_per_mtok_micros", "Input"], ["output_per_mtok_micros", "Output"], ["cache_read_per_mtok_micros", "Cache read"], ["cache_write_per_mtok_micros", "Cache write"]];
    return h("div", {}, h("h2", {}, "Prices (USD per million tokens)"),
      listView({
        name: "prices", rows: prices.slice().sort((a, b) => a.model.localeCompare(b.model)), text: (p) => p.model, pageSize: 10,
        rowAttrs: (p) => ({ "data-price": p.model }),
        columns: [{ label: "Model", cell: (p) => h("code", {}, p.model) }, ...cols.map(([k, l]) => ({ label: l, num: true, cell: (p) => usd(p[k]) }))],
      }),
      ADMIN ? form(async (f) => {
        let body;
        try {
          body = { model: val(f, "model") };
          for (const [k] of cols) if (val(f, k) !== "") body[k] = usdToMicros(val(f, k));
        } catch (e) { flash(e.message, true); return; }
        await change(`Price of ${body.model} saved`, () => api("PUT", "/api/v2/ai/prices", body), route);
      }, field("Model", h("input", { name: "model", required: true, size: 18 })),
        cols.map(([k, l]) => field(l + (k.startsWith("cache") ? " (default: input)" : ""), h("input", { name: k, inputmode: "decimal", size: 8, required: !k.startsWith("cache") }))),
        h("button", { class: "primary", type: "submit" }, "Set price")) : null);
  }

  // Spend by the pool key that answered (admins; needs the budget service's group_by=key).
  async function topKeys(range) {
    let rows, providers;
    try {
      [rows, providers] = await Promise.all([api("GET", "/api/v2/ai/usage", undefined, { ...range, group_by: "key" }), api("GET", "/api/v2/ai/providers")]);
    } catch (e) {
      return null;
    }
    const names = {};
    for (const p of providers.providers) for (const k of p.keys) names[k.id] = `${p.name} ${k.hint}`;
    const keyed = rows.rows.filter((r) => r.key).sort((a, b) => b.spend_micros - a.spend_micros).slice(0, 10);
    return h("div", {}, h("h2", {}, "Top pool keys"), h("table", { "data-top": "keys" },
      h("thead", {}, h("tr", {}, h("th", {}, "Key"), h("th", { class: "num" }, "Requests"), h("th", { class: "num" }, "Tokens"), h("th", { class: "num" }, "Spend"))),
      h("tbody", {}, keyed.length ? keyed.map((r) => h("tr", { "data-key-id": r.key }, h("td", {}, h("code", {}, names[r.key] || r.key)), h("td", { class: "num" }, num(r.interceptions)),
        h("td", { class: "num" }, num(r.input_tokens + r.output_tokens)), h("td", { class: "num" }, money(r.spend_micros)))) : h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No pool-key traffic in this range.")))));
  }

  function chart(days, stacks, value, metric) {
    const W = 960, H = 260, L = 70, R = 10, T = 10, Bm = 40;
    const totals = days.map((d) => stacks.reduce((a, st) => a + value(st.byDay[d] || { spend_micros: 0, input_tokens: 0, output_tokens: 0, cache_read_tokens: 0, cache_write_tokens: 0 }), 0));
    const max = Math.max(1, ...totals);
    const bw = (W - L - R) / Math.max(1, days.length);
    const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "usage per day" });
    for (let i = 0; i <= 4; i++) {
      const y = T + ((H - T - Bm) * i) / 4;
      const v = max * (1 - i / 4);
      svg.append(s("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#e3e5e8" }),
        s("text", { x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 11, fill: "#6b7280" }, metric === "spend" ? axisMoney(v, max) : num(Math.round(v))));
    }
    days.forEach((d, i) => {
      let y = H - Bm;
      for (const st of stacks) {
        const row = st.byDay[d];
        const v = row ? value(row) : 0;
        if (v <= 0) continue;
        const hgt = ((H - T - Bm) * v) / max;
        y -= hgt;
        svg.append(s("rect", { x: L + i * bw + bw * 0.15, y, width: Math.max(1, bw * 0.7), height: Math.max(0.5, hgt), fill: st.color, "data-day": d, "data-key": st.name },
          s("title", {}, `${d} · ${st.name}: ${metric === "spend" ? money(v) : num(v) + " tokens"}`)));
      }
      if (days.length <= 31 || i % Math.ceil(days.length / 31) === 0) {
        svg.append(s("text", { x: L + i * bw + bw / 2, y: H - Bm + 16, "text-anchor": "middle", "font-size": 10, fill: "#6b7280" }, d.slice(5)));
      }
    });
    const legend = h("div", { class: "legend" }, stacks.length ? stacks.map((st) => { const i = h("i"); i.style.background = st.color; return h("span", {}, i, st.name); }) : h("span", { class: "muted" }, "No traffic in this range."));
    return h("div", {}, svg, legend);
  }

  function csvCell(v) { const x = String(v); return /[",\n]/.test(x) ? '"' + x.replace(/"/g, '""') + '"' : x; }
  function exportCsv(days, stacks, dim, from, to) {
    const cols = ["interceptions", "spend_micros", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"];
    const lines = [["day", dim, ...cols, "spend_usd"].join(",")];
    for (const d of days) for (const st of stacks) {
      const r = st.byDay[d];
      if (!r || !r.interceptions) continue;
      lines.push([d, csvCell(st.name), ...cols.map((c) => r[c]), (r.spend_micros / 1e6).toFixed(6)].join(","));
    }
    const a = h("a", { href: URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" })), download: `aigw-usage-${from}-${to}-by-${dim}.csv` });
    document.body.append(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  // ================================================================== Traffic

  async function trafficPage() {
    const q = params();
    if (q.get("id")) return interceptionDetail(q.get("id"));
    const users = await userMap();
    const filters = {};
    for (const k of ["user", "provider", "model", "client", "session", "from", "to"]) if (q.get(k)) filters[k] = q.get(k);
    const cursors = [];
    let cursor = q.get("cursor") || "";
    const body = h("div");
    const auto = h("input", { type: "checkbox", checked: true, "aria-label": "auto-refresh" });
    const toolbar = form((f) => {
      const out = {};
      for (const k of ["user", "provider", "model", "client", "session"]) if (val(f, k)) out[k] = val(f, k);
      if (val(f, "from")) out.from = val(f, "from") + "T00:00:00Z";
      if (val(f, "to")) out.to = day(new Date(Date.parse(val(f, "to") + "T00:00:00Z") + 86400e3)) + "T00:00:00Z";
      go(out);
    },
      ADMIN ? field("User", h("select", { name: "user" }, h("option", { value: "" }, "anyone"), Object.entries(users).sort((a, b) => a[1].localeCompare(b[1])).map(([id, n]) => h("option", { value: id, selected: filters.user === id || filters.user === n }, n)))) : null,
      ["provider", "model", "client", "session"].map((k) => field(k[0].toUpperCase() + k.slice(1), h("input", { name: k, value: filters[k] || "", size: 12 }))),
      field("From", h("input", { name: "from", type: "date", value: filters.from ? filters.from.slice(0, 10) : "" })),
      field("To", h("input", { name: "to", type: "date", value: filters.to ? day(new Date(Date.parse(filters.to) - 86400e3)) : "" })),
      h("button", { class: "primary", type: "submit" }, "Filter"),
      h("label", {}, "Live", auto));
    async function load() {
      try {
        const data = await api("GET", "/api/v2/ai/interceptions", undefined, { ...filters, limit: 25, cursor });
        const rows = data.interceptions;
        body.replaceChildren(h("table", { "data-traffic": "" },
          h("thead", {}, h("tr", {}, ["Started", "User", "Client", "Provider", "Model", "Tokens in", "Tokens out", "Cost", "Status", "Duration"].map((t, i) => h("th", { class: i >= 5 && i <= 7 ? "num" : null }, t)))),
          h("tbody", {}, rows.length ? rows.map((r) => h("tr", { class: "clickable", "data-interception": r.id, onclick: () => go({ id: r.id }) },
            h("td", {}, when(r.started_at)), h("td", {}, users[r.user_id] || r.user_id || "—"), h("td", {}, r.client || "—"),
            h("td", {}, r.provider), h("td", {}, r.model), h("td", { class: "num", "data-col": "input" }, num(r.token_usage.input_tokens)),
            h("td", { class: "num", "data-col": "output" }, num(r.token_usage.output_tokens)), h("td", { class: "num", "data-col": "cost" }, money(r.cost_micros)),
            h("td", {}, badge(r.status, r.status === "ok" || r.status === "completed" ? "ok" : r.status)), h("td", {}, duration(r.started_at, r.ended_at)))) : h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No interceptions match.")))),
        h("div", { class: "pager" },
          h("button", { type: "button", disabled: !cursor, onclick: () => { cursor = cursors.pop() || ""; load(); } }, "‹ Newer"),
          h("span", { class: "muted" }, `${rows.length} shown`),
          h("button", { type: "button", disabled: !data.next_cursor, onclick: () => { cursors.push(cursor); cursor = data.next_cursor; load(); } }, "Older ›")));
      } catch (e) {
        if (e.status !== 401) body.replaceChildren(failed(e));
      }
    }
    show(toolbar, body);
    await load();
    every(5000, () => { if (auto.checked && !cursor && document.visibilityState === "visible") load(); });
  }

  async function interceptionDetail(id) {
    const [r, users] = await Promise.all([api("GET", "/api/v2/ai/interceptions/" + enc(id)), userMap()]);
    const row = (k, v) => h("tr", {}, h("th", {}, k), h("td", { "data-field": k }, v));
    const tu = r.token_usage;
    show(h("p", {}, h("a", { href: "/traffic", onclick: (ev) => { ev.preventDefault(); go({}); } }, "‹ All traffic")),
      h("div", { class: "cols" },
        h("table", { "data-interception-detail": r.id }, h("tbody", {},
          row("id", h("code", {}, r.id)), row("user", users[r.user_id] || r.user_id || "—"), row("provider", r.provider), row("model", r.model),
          row("client", r.client || "—"), row("session", r.session_id || "—"), row("credential", r.credential_kind || "—"),
          row("key", r.key_hint ? [h("code", {}, r.key_hint), " ", h("span", { class: "muted" }, r.key_id || "")] : r.credential_kind === "byok" ? "the user's own key" : "—"),
          row("status", badge(r.status, r.status === "ok" || r.status === "completed" ? "ok" : r.status)), row("started", when(r.started_at)), row("ended", when(r.ended_at)),
          row("duration", duration(r.started_at, r.ended_at)), row("cost", money(r.cost_micros)))),
        h("table", { "data-token-usage": "" }, h("thead", {}, h("tr", {}, h("th", {}, "Tokens"), h("th", { class: "num" }, "count"))),
          h("tbody", {}, ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"].map((k) => h("tr", {}, h("td", {}, k.replace(/_/g, " ")), h("td", { class: "num", "data-field": k }, num(tu[k]))))))),
      h("h2", {}, "Prompt"), r.prompt ? h("pre", { "data-prompt": "" }, r.prompt) : h("p", { class: "muted" }, "No prompt recorded."),
      h("h2", {}, "Tool calls"),
      r.tool_calls.length ? h("table", {}, h("thead", {}, h("tr", {}, ["Name", "Call id", "Arguments", "Injected", "Error"].map((t) => h("th", {}, t)))),
        h("tbody", {}, r.tool_calls.map((c) => h("tr", {}, h("td", {}, c.name), h("td", {}, h("code", {}, c.call_id || "")), h("td", {}, h("pre", {}, c.arguments || "")), h("td", {}, c.injected ? "yes" : "no"), h("td", {}, c.error || ""))))) : h("p", { class: "muted" }, "No tool calls."));
  }

  // ================================================================== Audit log

  async function auditPage() {
    if (!ADMIN) return show(h("p", { class: "muted" }, "The audit log is for admins."));
    const q = params();
    const filters = {};
    for (const k of ["action", "resource_type", "resource_id", "actor"]) if (q.get(k)) filters[k] = q.get(k);
    const cursors = [];
    let cursor = "";
    const body = h("div");
    const toolbar = form((f) => { const out = {}; for (const k of Object.keys({ action: 1, resource_type: 1, resource_id: 1, actor: 1 })) if (val(f, k)) out[k] = val(f, k); go(out); },
      field("Action", h("input", { name: "action", value: filters.action || "", placeholder: "provider.update", size: 14 })),
      field("Resource type", h("select", { name: "resource_type" }, ["", "provider", "provider_key", "user", "token", "group", "user_provider_key"].map((t) => h("option", { value: t, selected: filters.resource_type === t }, t || "any")))),
      field("Resource id", h("input", { name: "resource_id", value: filters.resource_id || "", size: 14 })),
      field("Actor", h("input", { name: "actor", value: filters.actor || "", size: 12 })),
      h("button", { class: "primary", type: "submit" }, "Filter"));
    async function load() {
      try {
        const data = await api("GET", "/api/v2/audit-logs", undefined, { ...filters, limit: 50, cursor });
        body.replaceChildren(h("table", { "data-audit": "" },
          h("thead", {}, h("tr", {}, ["When", "Actor", "Action", "Resource", "Change"].map((t) => h("th", {}, t)))),
          h("tbody", {}, data.audit_logs.length ? data.audit_logs.map((e) => h("tr", { "data-action": e.action },
            h("td", {}, when(e.at)), h("td", {}, e.actor_name), h("td", {}, h("code", {}, e.action)), h("td", {}, e.resource_type, " ", h("code", {}, e.resource_id)),
            h("td", {}, e.before || e.after ? h("details", {}, h("summary", {}, "before / after"), h("pre", {}, JSON.stringify({ before: e.before, after: e.after }, null, 2))) : "—"))) : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No entries match.")))),
        h("div", { class: "pager" },
          h("button", { type: "button", disabled: !cursor, onclick: () => { cursor = cursors.pop() || ""; load(); } }, "‹ Newer"),
          h("button", { type: "button", disabled: !data.next_cursor, onclick: () => { cursors.push(cursor); cursor = data.next_cursor; load(); } }, "Older ›")));
      } catch (e) {
        if (e.status !== 401) body.replaceChildren(failed(e));
      }
    }
    show(toolbar, body);
    await load();
  }

  // ------------------------------------------------------------------ routing

  const PAGES = { providers: providersPage, people: peoplePage, budgets: budgetsPage, usage: usagePage, traffic: trafficPage, audit: auditPage };
  async function route() {
    delete B.dataset.ready;  // set again once the page has rendered (tests and screenshots wait for it)
    for (const t of [...timers]) { clearInterval(t); timers.delete(t); }
    try {
      await PAGES[PAGE]();
    } catch (e) {
      if (e.status === 401) return;
      show(e instanceof ApiError ? failed(e) : h("p", { class: "error" }, String(e)));
    }
    B.dataset.ready = "1";
  }
  route();
})();
