// The plait dashboard: draws what the proxy's execution and cluster routes answer. Plain
// JavaScript, no build step. Every value from the server is set as text (textContent), never
// as HTML.
"use strict";

const ROOT = document.body.dataset.root || "";
const STATUSES = ["running", "suspended", "succeeded", "failed", "interrupted"];
const TOKEN_KEY = "plait-token";

const $ = (selector) => document.querySelector(selector);

function element(tag, attributes = {}, ...children) {
  const made = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") made.className = value;
    else if (name === "text") made.textContent = value;
    else made.setAttribute(name, value);
  }
  for (const child of children) made.append(child);
  return made;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

class NeedsToken extends Error {}

async function api(path, options = {}) {
  const headers = { accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(ROOT + path, { ...options, headers });
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("#token-form").hidden = false;
    throw new NeedsToken("this proxy needs its token");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      if (problem && problem.message) message = `${problem._tag}: ${problem.message}`;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response.status === 204 ? null : response.json();
}

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.` +
    pad(date.getMilliseconds(), 3);
}

function statusBadge(status) {
  return element("span", { class: `status ${status}`, text: status });
}

function errorSummary(error) {
  if (!error) return "";
  if (error._tag === "Fail" && error.error) return error.error._tag || "Fail";
  if (error._tag === "Die" && error.defect) return `Die: ${error.defect.name}: ${error.defect.message}`;
  return error._tag || JSON.stringify(error);
}

function json(value) {
  return value === undefined ? "" : JSON.stringify(value, null, 2);
}

// The list of executions -----------------------------------------------------------------

function currentFilters() {
  const query = new URLSearchParams(location.search);
  const filters = {};
  for (const name of ["workflow", "status", "since", "until"]) {
    const value = query.get(name);
    if (value) filters[name] = value;
  }
  return filters;
}

function toLocalInput(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 16);
}

function navigate(filters) {
  const query = new URLSearchParams(filters).toString();
  history.pushState(null, "", `${ROOT}/dashboard${query ? `?${query}` : ""}`);
  route();
}

async function showCounts(filters) {
  const query = new URLSearchParams();
  for (const name of ["workflow", "since", "until"]) if (filters[name]) query.set(name, filters[name]);
  const counts = await api(`/executions/counts?${query}`);
  const nav = $("#counts");
  nav.replaceChildren();
  const total = STATUSES.reduce((sum, status) => sum + counts[status], 0);
  const chip = (status, label, count) => {
    const link = element("a", { href: "#", "data-status": status },
      element("span", { class: "label", text: label }),
      element("span", { class: "count", text: String(count) }));
    if ((filters.status || "") === status) link.classList.add("selected");
    link.addEventListener("click", (event) => {
      event.preventDefault();
      const next = { ...filters };
      if (status) next.status = status; else delete next.status;
      navigate(next);
    });
    return link;
  };
  nav.append(chip("", "all", total));
  for (const status of STATUSES) {
    nav.append(chip(status, status, counts[status] >= counts.cap ? `${counts.cap}+` : counts[status]));
  }
}

function executionRow(execution) {
  const link = element("a", {
    href: `${ROOT}/dashboard/executions/${encodeURIComponent(execution.executionId)}`,
    text: execution.executionId,
  });
  return element("tr", { "data-id": execution.executionId, "data-status": execution.status },
    element("td", { class: "id" }, link),
    element("td", { class: "workflow", text: execution.workflow }),
    element("td", { class: "status-cell" }, statusBadge(execution.status)),
    element("td", { class: "created", text: when(execution.createdAt) }),
    element("td", { class: "updated", text: when(execution.updatedAt) }),
    element("td", { class: "error", text: errorSummary(execution.error) }));
}

let nextPage = null;

async function loadPage(filters, after) {
  const query = new URLSearchParams(filters);
  query.set("limit", "50");
  if (after) query.set("after", after);
  const page = await api(`/executions?${query}`);
  const body = $("#executions tbody");
  for (const execution of page.executions) body.append(executionRow(execution));
  nextPage = page.next;
  $("#more").hidden = !nextPage;
  $("#empty").hidden = body.children.length > 0;
}

async function showList() {
  $("#execution-view").hidden = true;
  $("#list-view").hidden = false;
  document.title = "plait · executions";
  const filters = currentFilters();
  $("#filter-workflow").value = filters.workflow || "";
  $("#filter-status").value = filters.status || "";
  $("#filter-since").value = filters.since ? toLocalInput(filters.since) : "";
  $("#filter-until").value = filters.until ? toLocalInput(filters.until) : "";
  $("#executions tbody").replaceChildren();
  await Promise.all([showCounts(filters), loadPage(filters, null)]);
}

// One execution --------------------------------------------------------------------------

function timelineItem(event) {
  const item = element("li", { class: event.kind, "data-kind": event.kind });
  item.append(element("span", { class: "when", text: when(event.at) }));
  item.append(element("span", { class: "kind", text: event.kind }));
  item.append(element("span", { class: "name", text: event.name }));
  if (event.attempt !== null && event.attempt !== undefined && event.kind === "activity") {
    item.append(element("span", { class: "attempt muted", text: `attempt ${event.attempt} ` }));
  }
  if (event.occurrence > 1) {
    item.append(element("span", { class: "muted", text: `(#${event.occurrence}) ` }));
  }
  if (event.outcome) {
    item.append(element("span", { class: `outcome ${event.outcome}`, text: event.outcome }));
  }
  if (event.error) item.append(element("pre", { class: "detail", text: json(event.error) }));
  else if (event.value !== null && event.value !== undefined) {
    item.append(element("pre", { class: "detail", text: json(event.value) }));
  }
  return item;
}

async function showExecution(executionId) {
  $("#list-view").hidden = true;
  $("#execution-view").hidden = false;
  const timeline = await api(`/executions/${encodeURIComponent(executionId)}`);
  document.title = `plait · ${timeline.workflow} ${timeline.executionId}`;
  $("#ex-workflow").textContent = timeline.workflow;
  $("#ex-status").replaceWith(Object.assign(statusBadge(timeline.status), { id: "ex-status" }));
  $("#ex-id").textContent = timeline.executionId;
  $("#ex-created").textContent = when(timeline.createdAt);
  $("#ex-updated").textContent = when(timeline.updatedAt);
  const parent = $("#ex-parent");
  parent.replaceChildren();
  if (timeline.parent) {
    parent.append(element("a", {
      href: `${ROOT}/dashboard/executions/${encodeURIComponent(timeline.parent)}`,
      text: timeline.parent,
    }));
  } else parent.textContent = "—";
  $("#ex-payload").textContent = json(timeline.payload);
  const failed = timeline.error !== null && timeline.error !== undefined;
  $("#ex-outcome-label").textContent = failed ? "Error" : "Result";
  $("#ex-outcome").textContent = failed ? json(timeline.error) :
    (timeline.status === "succeeded" ? json(timeline.result) : "—");
  const open = timeline.status === "running" || timeline.status === "suspended";
  for (const button of document.querySelectorAll("#actions button")) {
    button.hidden = !open || (button.dataset.action === "resume" && timeline.status !== "suspended");
    button.onclick = async () => {
      try {
        await api(`/executions/${encodeURIComponent(executionId)}/${button.dataset.action}`,
          { method: "POST" });
        await showExecution(executionId);
      } catch (error) {
        if (!(error instanceof NeedsToken)) showError(error.message);
      }
    };
  }
  $("#timeline").replaceChildren(...timeline.events.map(timelineItem));
}


// The cluster ------------------------------------------------------------------------------

// Shard ids as ranges per group: "default:1-100, 205".
function shardRanges(shards) {
  const groups = new Map();
  for (const shard of shards) {
    const at = shard.lastIndexOf(":");
    const group = shard.slice(0, at);
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group).push(Number(shard.slice(at + 1)));
  }
  const parts = [];
  for (const [group, ids] of groups) {
    ids.sort((a, b) => a - b);
    const ranges = [];
    let start = ids[0];
    let end = ids[0];
    for (const id of ids.slice(1).concat([NaN])) {
      if (id === end + 1) { end = id; continue; }
      ranges.push(start === end ? `${start}` : `${start}-${end}`);
      start = id;
      end = id;
    }
    parts.push(`${group}:${ranges.join(", ")}`);
  }
  return parts.join("; ");
}

let clusterTimer = null;

async function showCluster() {
  $("#list-view").hidden = true;
  $("#execution-view").hidden = true;
  $("#cluster-view").hidden = false;
  document.title = "plait · cluster";
  const cluster = await api("/cluster");
  $("#no-cluster").hidden = cluster.cluster;
  $("#cluster-summary").hidden = !cluster.cluster;
  $("#runners-section").hidden = !cluster.cluster || cluster.assignments.length === 0;
  $("#entities-where").textContent = cluster.cluster ? "on this runner" : "in this engine";
  if (cluster.cluster) {
    $("#cl-address").textContent = cluster.address ||
      "none: a client-only process, which holds no shard";
    $("#cl-machine").textContent = String(cluster.machineId);
    $("#cl-runners").textContent = `${cluster.runners} registered, ${cluster.healthyRunners} healthy`;
    $("#cl-fenced").textContent = String(cluster.fencedWrites);
    $("#runners tbody").replaceChildren(...cluster.assignments.map((runner) => {
      const address = element("td", { class: "address mono", text: runner.address });
      if (runner.this) address.append(element("span", { class: "this", text: "this proxy" }));
      return element("tr", { "data-address": runner.address, "data-this": String(runner.this) },
        address,
        element("td", { class: "shard-count", text: String(runner.shards.length) }),
        element("td", { class: "shard-ids", text: shardRanges(runner.shards) }),
        element("td", { class: "count", text: runner.entities == null ? "—" : String(runner.entities) }));
    }));
  }
  const types = Object.entries(cluster.entityTypes);
  $("#entity-counts tbody").replaceChildren(...types.map(([name, count]) =>
    element("tr", { "data-type": name },
      element("td", { class: "type", text: name }),
      element("td", { class: "count", text: String(count) }))));
  $("#no-entities").hidden = types.length > 0;
  $("#singletons").textContent = cluster.singletons.length ? cluster.singletons.join(", ") : "none";
}

// Routing ----------------------------------------------------------------------------------

function onClusterPage() {
  return location.pathname.replace(/\/$/, "") === `${ROOT}/dashboard/cluster`;
}

async function route() {
  showError("");
  clearTimeout(clusterTimer);
  const prefix = `${ROOT}/dashboard/executions/`;
  const cluster = onClusterPage();
  $("#cluster-view").hidden = !cluster;
  $("#nav-cluster").classList.toggle("current", cluster);
  $("#nav-executions").classList.toggle("current", !cluster);
  try {
    if (location.pathname.startsWith(prefix)) {
      await showExecution(decodeURIComponent(location.pathname.slice(prefix.length)));
    } else if (cluster) {
      await showCluster();
      // Shards move as runners come and go: look again every two seconds.
      clusterTimer = setTimeout(() => { if (onClusterPage()) route(); }, 2000);
    } else {
      await showList();
    }
  } catch (error) {
    if (!(error instanceof NeedsToken)) showError(error.message);
  }
}

function setUp() {
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const filters = {};
    const workflow = $("#filter-workflow").value.trim();
    if (workflow) filters.workflow = workflow;
    if ($("#filter-status").value) filters.status = $("#filter-status").value;
    for (const name of ["since", "until"]) {
      const value = $(`#filter-${name}`).value;
      if (value) filters[name] = new Date(value).toISOString();
    }
    navigate(filters);
  });
  $("#clear").addEventListener("click", () => navigate({}));
  $("#more").addEventListener("click", async () => {
    try {
      await loadPage(currentFilters(), nextPage);
    } catch (error) {
      if (!(error instanceof NeedsToken)) showError(error.message);
    }
  });
  $("#search").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("#search-id").value.trim();
    if (!id) return;
    history.pushState(null, "", `${ROOT}/dashboard/executions/${encodeURIComponent(id)}`);
    route();
  });
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value);
    $("#token").value = "";
    $("#token-form").hidden = true;
    route();
  });
  for (const link of [$("#home"), $("#back"), $("#nav-executions")]) {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      navigate({});
    });
  }
  $("#nav-cluster").addEventListener("click", (event) => {
    event.preventDefault();
    history.pushState(null, "", `${ROOT}/dashboard/cluster`);
    route();
  });
  window.addEventListener("popstate", route);
  route();
}

setUp();
