// The run page's live updates: node states, the run's status and the event list, from the
// server-sent events of /runs/<id>/events (WatchRun). Clicking a node loads its details.
(function () {
  "use strict";
  const page = document.getElementById("run");
  if (!page) return;
  const runId = page.dataset.runId;
  const base = "/runs/" + encodeURIComponent(runId);
  const events = document.getElementById("events");
  const status = document.getElementById("run-status");
  // The page came with the run's history (the events list) up to the event whose cursor is
  // data-cursor, and with the graph and status read after it: the stream starts after that event,
  // so every event it brings is newer than what the page shows (no clock comparison: the events'
  // times come from the clocks of several scheduler replicas).
  const cursor = page.dataset.cursor || "";
  // The graph is reloaded at most once per RELOAD_MS (a run adding many nodes sends a NODE_ADDED
  // each, and each reload lays the whole graph out again on the server).
  const RELOAD_MS = 2000;
  let lastReload = -Infinity;
  let reloadTimer = null;
  let selected = null;

  function setRunStatus(value) {
    if (!value || !status) return;
    status.dataset.status = value;
    status.className = "status " + value;
    status.textContent = value;
    if (["SUCCEEDED", "FAILED", "CANCELED"].includes(value)) {
      const cancel = document.getElementById("cancel-form");
      if (cancel) cancel.remove();
    }
  }

  function nodeElement(nodeId) {
    return document.getElementById("node-" + nodeId);
  }

  function showDetails(nodeId) {
    if (selected) selected.classList.remove("selected");
    selected = nodeElement(nodeId);
    if (selected) selected.classList.add("selected");
    htmx.ajax("GET", base + "/nodes/" + encodeURIComponent(nodeId), "#node-details");
  }

  function bindGraph() {
    // SVG boxes (g.node) or, for a graph too large to draw, table rows (tr.node).
    document.querySelectorAll("#run-graph .node").forEach(function (node) {
      node.addEventListener("click", function () { showDetails(node.dataset.nodeId); });
      node.addEventListener("keydown", function (e) {
        if (e.key === "Enter") showDetails(node.dataset.nodeId);
      });
    });
  }

  function reloadGraph() {
    if (reloadTimer !== null) return; // one is already due
    const wait = lastReload + RELOAD_MS - Date.now();
    if (wait > 0) {
      reloadTimer = setTimeout(function () { reloadTimer = null; reloadGraph(); }, wait);
      return;
    }
    lastReload = Date.now();
    fetch(base + "/graph", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (svg) {
        const panel = document.getElementById("graph-panel");
        panel.innerHTML = svg;
        bindGraph();
        if (selected) {
          selected = nodeElement(selected.dataset.nodeId);
          if (selected) selected.classList.add("selected");
        }
      })
      .catch(function () { /* the next event retries */ });
  }

  function appendEvent(data) {
    const item = document.createElement("li");
    item.className = "event " + data.type;
    item.dataset.type = data.type;
    const at = data.at_ms ? new Date(Number(data.at_ms)).toISOString().replace("T", " ").slice(0, 23) : "";
    // A run-level event (RUN_FAILED...) may name a node (the one that failed): it is listed under
    // "(run)", the node in its text.
    const runLevel = data.type.startsWith("RUN_");
    const parts = [at, runLevel ? "(run)" : data.node_id || "(run)", data.type];
    if (runLevel && data.node_id) parts.push("node " + data.node_id);
    if (data.attempt) parts.push("attempt " + data.attempt);
    if (data.worker_id) parts.push(data.worker_id);
    if (data.error && (data.error.type || data.error.message)) {
      parts.push(data.error.type + ": " + data.error.message);
    }
    if (data.message) parts.push(data.message);
    item.textContent = parts.join(" · ");
    events.appendChild(item);
    events.scrollTop = events.scrollHeight;
  }

  function apply(data) {
    appendEvent(data);
    if (data.type === "NODE_WAITING") waitedNodes.add(data.node_id);
    if (data.type === "NODE_ADDED" && !nodeElement(data.node_id)) {
      reloadGraph();
    } else if (data.node_state && data.node_id) {
      const node = nodeElement(data.node_id);
      if (node) {
        node.dataset.state = data.node_state;
        const cell = node.querySelector("td.state"); // the node table's state column
        if (cell) cell.textContent = data.node_state;
      }
    }
    setRunStatus(data.run_status);
    refreshPanels(data);
  }

  // The "Waiting for people" panel follows requests that open (a node waits, the run pauses) and
  // close (the run resumes, a node that waited goes on); once the run ends (data null: the
  // stream's end), the header too (ended at, duration), reloaded from the page itself.
  const waitedNodes = new Set();
  function refreshPanels(data) {
    const type = data ? data.type : "end";
    const goesOn = (type === "NODE_READY" || type === "NODE_SUCCEEDED") && waitedNodes.has(data.node_id);
    const ended = type === "end" || ["RUN_SUCCEEDED", "RUN_FAILED", "RUN_CANCELED"].includes(type);
    if (type === "NODE_WAITING" || type === "RUN_PAUSED" || type === "RUN_RESUMED" || goesOn || ended) {
      reloadPart("#feedback");
    }
    if (ended && page.dataset.ended !== "true") {
      page.dataset.ended = "true";
      reloadPart("#run-header");
    }
  }

  // Each part is its own request's source: htmx runs one request at a time per source element (the
  // body, when none is given) and keeps only the last one queued, so a shared source would let the
  // feedback panel's next reload replace the header's.
  function reloadPart(selector) {
    htmx.ajax("GET", window.location.pathname,
      { source: selector, target: selector, select: selector, swap: "outerHTML" });
  }

  bindGraph();
  events.scrollTop = events.scrollHeight;
  const source = new EventSource(base + "/events" + (cursor ? "?cursor=" + encodeURIComponent(cursor) : ""));
  source.addEventListener("run-event", function (e) { apply(JSON.parse(e.data)); });
  source.addEventListener("failure", function (e) {
    const data = JSON.parse(e.data);
    const item = document.createElement("li");
    item.className = "event failure";
    item.textContent = "live updates stopped: " + data.message;
    events.appendChild(item);
  });
  source.addEventListener("end", function () {
    source.close();
    page.dataset.live = "ended";
    refreshPanels(null);
    // The history has no event per node for a run's end (a cancel leaves READY nodes CANCELED
    // without one): once the run ended, the graph is drawn again from the run's final node states.
    reloadGraph();
  });
})();
