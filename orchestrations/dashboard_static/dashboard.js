// The dashboard: reads the status API every few seconds and acts through the same routes as adapterctl.
// No key is ever part of this file or the page: in Azure the user types a function key, kept in this tab's
// sessionStorage and sent as the x-functions-key header (orchestrations/dashboard.py, docs/dashboard.md).
"use strict";

(() => {
  const API = new URL("../../", document.currentScript.src); // .../api/ (the script is at api/dashboard/static/)
  const KEY_STORE = "dashboard.functionKey";
  const POLL_MS = 2000;
  const PAGE_ROWS = 50;
  const FIRST_LIMIT = 200; // the status API's cap per call
  const POLL_LIMIT = 50;
  const FIRST_VIEW = "dashboard:first-view"; // a performance mark: the first view with data drawn // newer records merge into what the first load read
  const TERMINAL = new Set(["live", "rolled_back", "failed", "superseded"]);
  const STAGES = ["received", "validating", "staging", "provisioning", "activating", "evaluating", "awaiting_approval",
    "canary", "verifying", "retrying", "finishing", ...TERMINAL];
  // What a person may decide in which stage (orchestrations/progressive.py ACTIONS_BY_STAGE); the API refuses the
  // rest with 409, which the page shows.
  const ACTIONS_BY_STAGE = { awaiting_approval: ["approve", "reject", "abort"], canary: ["promote", "abort"] };
  const DECISIONS = {
    promote: ["Promote", "The candidate takes all traffic now, skipping the canary's remaining steps."],
    abort: ["Abort", "The candidate is taken out of traffic and the rollout ends rolled back; the live version stays."],
    approve: ["Approve", "The rollout goes on: to its canary steps, or to all traffic."],
    reject: ["Reject", "The rollout ends rolled back; the live version stays."],
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    apps: new Map(), // name -> GET /api/apps/{app}
    records: new Map(), // name -> Map(id -> record)
    shown: PAGE_ROWS,
    selected: null, // record id whose timeline is open
    selectedRecord: null,
    policy: null, // GET /api/apps/{app}/policy of the selected record's app
    askedForKey: false,
    appsKnown: false, // the last read of the app list worked
    readFailed: false, // the status line's last message is a failed read (the next good read clears it; others stay)
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** One status API call; the key, when one is set, goes in the x-functions-key header (never in the URL). */
  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers["x-functions-key"] = key;
    const response = await fetch(new URL(path, API), { ...options, headers, cache: "no-store" });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = (body && body.error && body.error.message) || response.statusText || "request failed";
      throw new ApiError(response.status, message);
    }
    return body;
  }

  const appPath = (app) => `apps/${encodeURIComponent(app)}`;

  function say(text, isError = false) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("error", isError);
    state.readFailed = false;
  }

  function refused(error) {
    if (error.status !== 401 && error.status !== 403) return false;
    say(`The API refused the request (${error.status}): enter the function key above.`, true);
    if (!state.askedForKey) $("key").focus();
    state.askedForKey = true;
    return true;
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.append(cell);
      else td.textContent = cell ?? "";
      tr.append(td);
    }
    return tr;
  }

  function button(text, action, value, label) {
    const node = element("button", text);
    node.type = "button";
    node.dataset.action = action;
    node.dataset.value = value;
    if (label) node.setAttribute("aria-label", label);
    return node;
  }

  const stageBadge = (stage) => element("span", stage || "?", `stage stage-${stage || "unknown"}`);
  const percent = (fraction) => (typeof fraction === "number" ? `${(fraction * 100).toFixed(1)} %` : "–");
  const score = (value) => (typeof value === "number" ? value.toFixed(2) : "–");

  /** A record's stage, with the canary's weight while it runs ("canary 50 %"). */
  function stageCell(record) {
    const cell = element("span");
    cell.append(stageBadge(record.stage));
    const canary = record.canary;
    if (record.stage === "canary" && canary && typeof canary.weight === "number") {
      cell.append(" ", element("span", `${canary.weight} %`, "weight"));
    }
    return cell;
  }
  const time = (iso) => (iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" }) : "");

  function seconds(from, to) {
    const s = (Date.parse(to) - Date.parse(from)) / 1000;
    if (!Number.isFinite(s)) return "";
    return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  }

  function reasonOf(record) {
    if (record.reason) return record.reason;
    if (record.superseded_by) return `superseded by ${record.superseded_by}`;
    if (record.rollback_to) return `rollback to ${record.rollback_to}`;
    return "";
  }

  // -- reading ---------------------------------------------------------------------------------------------------
  async function loadApp(app) {
    const known = state.records.get(app);
    const limit = known ? POLL_LIMIT : FIRST_LIMIT;
    const [detail, list] = await Promise.all([
      api(appPath(app)),
      api(`${appPath(app)}/deployments?limit=${limit}`),
    ]);
    const records = known || new Map();
    for (const record of list.deployments) records.set(record.id, record);
    state.apps.set(app, detail);
    state.records.set(app, records);
  }

  async function refresh() {
    try {
      const { apps } = await api("apps");
      const results = await Promise.allSettled(apps.map(loadApp));
      for (const name of [...state.apps.keys(), ...state.records.keys()]) {
        if (!apps.includes(name)) {
          state.apps.delete(name);
          state.records.delete(name);
        }
      }
      const failure = results.find((r) => r.status === "rejected" && r.reason.status !== 404);
      if (failure) throw failure.reason;
      state.appsKnown = true;
      if (state.selected) await loadSelected();
      if (state.readFailed) say("");
      state.askedForKey = false;
      $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      state.appsKnown = false;
      if (!(error instanceof ApiError && refused(error))) say(`Cannot read the status API: ${error.message}`, true);
      state.readFailed = true;
    }
    render();
    if (state.apps.size && !performance.getEntriesByName(FIRST_VIEW).length) performance.mark(FIRST_VIEW);
  }

  async function loadSelected() {
    const cached = state.selectedRecord;
    if (cached && cached.id === state.selected && TERMINAL.has(cached.stage)) return;
    try {
      state.selectedRecord = await api(`deployments/${encodeURIComponent(state.selected)}`);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
    }
    const app = state.selectedRecord && state.selectedRecord.app;
    if (app && (!state.policy || state.policy.app !== app || !TERMINAL.has(state.selectedRecord.stage))) {
      state.policy = await api(`${appPath(app)}/policy`).catch((error) => {
        if (!(error instanceof ApiError) || error.status === 401 || error.status === 403) throw error;
        return error.status === 404 ? null : { app, error: error.message }; // gone; or shown in its place
      });
    }
  }

  let timer = null;
  let running = null;
  /** Refresh now (joining one in flight), then again every POLL_MS while the tab is visible: one chain at a time. */
  function poll() {
    clearTimeout(timer);
    running = running || refresh().finally(() => {
      running = null;
      timer = setTimeout(() => document.hidden || poll(), POLL_MS);
    });
    return running;
  }
  document.addEventListener("visibilitychange", () => document.hidden || poll());

  // -- drawing ---------------------------------------------------------------------------------------------------
  function render() {
    const focused = document.activeElement && document.activeElement.dataset;
    const refocus = focused && focused.action ? [focused.action, focused.value] : null;
    renderApps();
    renderFilters();
    renderRollouts();
    renderTimeline();
    if (refocus) {
      const again = [...document.querySelectorAll("button[data-action]")]
        .find((b) => b.dataset.action === refocus[0] && b.dataset.value === refocus[1]);
      if (again) again.focus();
    }
  }

  function renderApps() {
    const body = $("apps").tBodies[0];
    body.replaceChildren(...[...state.apps.values()].map((a) => {
      const last = a.last_rollout;
      const lastCell = document.createElement("span");
      if (last) lastCell.append(button(last.id, "select", last.id, `Timeline of ${last.id}`), " ", stageCell(last));
      const served = a.served ? a.served.version || a.served.adapter : "none";
      const reconciler = a.deleting ? "deleting" : (a.reconciler && (a.reconciler.phase || a.reconciler.runtime_status)) || "";
      const actions = element("span", null, "actions");
      actions.append(button("Roll back", "rollback", a.app, `Roll back ${a.app}`), " ",
        button("Delete", "delete", a.app, `Delete ${a.app}`));
      return row([element("strong", a.app), served, a.endpoint || "", `${a.running ? "running" : "stopped"} / ${a.replicas ?? 0}`,
        lastCell, reconciler, actions]);
    }));
    $("no-apps").hidden = state.apps.size > 0;
  }

  function renderFilters() {
    const select = $("filter-app");
    const names = [...state.apps.keys()].sort();
    const current = [...select.options].slice(1).map((o) => o.value);
    if (names.join("\n") !== current.join("\n")) {
      const chosen = select.value;
      select.replaceChildren(new Option("all", ""), ...names.map((n) => new Option(n, n)));
      select.value = names.includes(chosen) ? chosen : "";
      $("deploy-apps").replaceChildren(...names.map((n) => new Option(n, n)));
    }
  }

  function filtered() {
    const app = $("filter-app").value;
    const stage = $("filter-stage").value;
    const text = $("filter-text").value.trim().toLowerCase();
    const all = [];
    for (const [name, records] of state.records) if (!app || app === name) all.push(...records.values());
    return all
      .filter((r) => !stage || r.stage === stage)
      .filter((r) => !text || [r.id, r.adapter, r.version, r.stage, r.cause, reasonOf(r)]
        .some((v) => v && String(v).toLowerCase().includes(text)))
      .sort((a, b) => (Date.parse(b.accepted_at) || 0) - (Date.parse(a.accepted_at) || 0) || (b.id > a.id ? 1 : -1));
  }

  function renderRollouts() {
    const records = filtered();
    const visible = records.slice(0, state.shown);
    $("rollouts").tBodies[0].replaceChildren(...visible.map((r) => {
      const tr = row([button(r.id, "select", r.id, `Timeline of ${r.id}`), r.app, r.version || r.adapter,
        stageCell(r), time(r.accepted_at), reasonOf(r)]);
      tr.dataset.id = r.id;
      if (r.id === state.selected) tr.setAttribute("aria-current", "true");
      return tr;
    }));
    $("count").textContent = `Showing ${visible.length} of ${records.length} records`;
    $("more").hidden = visible.length >= records.length;
  }

  function renderTimeline() {
    const record = state.selectedRecord;
    $("timeline-section").hidden = !record;
    if (!record) return;
    $("timeline-title").textContent = `Timeline of ${record.id}`;
    const history = record.history || [];
    const open = !TERMINAL.has(record.stage);
    const total = history.length > 1 && !open ? seconds(history[0].at, history[history.length - 1].at) : "";
    const facts = [["Stage", record.stage || record.state || record.runtime_status], ["Adapter", record.adapter],
      ["Version", record.version], ["Activation", record.activation], ["Cause", record.cause],
      ["Reason", reasonOf(record)], ["Rollback of", record.rollback_of], ["Policy", record.policy_source],
      ["Took", total]];
    $("timeline-facts").replaceChildren(...facts.filter(([, v]) => v)
      .flatMap(([k, v]) => [element("dt", k), element("dd", v)]));
    $("timeline").replaceChildren(...history.map((entry, i) => {
      const next = history[i + 1];
      const li = element("li");
      li.dataset.stage = entry.stage;
      let took = "";
      if (next) took = `took ${seconds(entry.at, next.at)}`;
      else if (open) took = `for ${seconds(entry.at, new Date().toISOString())} so far`;
      li.append(stageBadge(entry.stage), " ", element("time", time(entry.at)), " ", element("span", took, "duration"));
      li.querySelector("time").dateTime = entry.at;
      return li;
    }));
    renderDecisions(record);
    renderGate(record.evaluation);
    renderApproval(record.approval);
    renderCanary(record.canary);
    renderPolicy(state.policy && state.policy.app === record.app ? state.policy : null);
  }

  function renderDecisions(record) {
    const accepted = ACTIONS_BY_STAGE[record.stage] || [];
    $("record-actions").hidden = !accepted.length;
    $("record-actions").replaceChildren(...accepted.map((action) =>
      button(DECISIONS[action][0], action, record.id, `${DECISIONS[action][0]} ${record.id}`)));
  }

  /** The quality gate: per evaluation set, the candidate's and the live version's scores and failing cases. */
  function renderGate(evaluation) {
    $("gate-section").hidden = !evaluation;
    if (!evaluation) return;
    const verdict = { true: "passed", false: "was refused" }[evaluation.passed] || "is being evaluated";
    $("gate-summary").textContent = `The candidate ${verdict}` +
      (typeof evaluation.max_regression === "number" ? `; at most ${score(evaluation.max_regression)} below live` : "");
    const rows = [];
    for (const [name, set] of Object.entries(evaluation.sets || {})) {
      for (const who of ["candidate", "live"]) {
        const result = set[who];
        if (!result) continue;
        const failing = element("ul", null, "failing");
        failing.append(...(result.failing || []).map((c) =>
          element("li", `case ${c.case}: ${c.why || "failed"}` + (c.reply ? ` (replied "${c.reply}")` : ""))));
        rows.push(row([`${name} set`, who, score(result.score), `${result.passed ?? "–"} / ${result.total ?? "–"}`,
          score(set.min_score), failing]));
      }
    }
    $("gate").tBodies[0].replaceChildren(...rows);
  }

  function renderApproval(approval) {
    $("approval-section").hidden = !approval;
    if (!approval) return;
    const facts = [["Required", approval.required ? "yes" : "no"], ["Deadline", time(approval.deadline)],
      ["Decision", approval.decision || "waiting"], ["By", approval.by], ["At", time(approval.at)]];
    $("approval").replaceChildren(...facts.filter(([, v]) => v).flatMap(([k, v]) => [element("dt", k), element("dd", v)]));
  }

  /** The canary: its steps, where it is, and each finished step's figures by version with the verdict. */
  function renderCanary(canary) {
    $("canary-section").hidden = !canary;
    if (!canary) return;
    if (canary.skipped) {
      $("canary-summary").textContent = `Skipped: ${canary.skipped}`;
      $("analysis").tBodies[0].replaceChildren();
      return;
    }
    const steps = canary.steps || [];
    const hold = canary.hold_until ? `, held until ${time(canary.hold_until)}` : "";
    $("canary-summary").textContent = `Steps ${steps.map((s) => `${s} %`).join(" → ")}; ` +
      `step ${canary.step ?? "–"} of ${steps.length}, weight ${canary.weight ?? 0} %${hold}`;
    const rows = [];
    for (const step of canary.analysis || []) {
      const figures = Object.entries(step.figures || {});
      const why = [step.why, step.by && `by ${step.by}`].filter(Boolean).join("; ");
      const lead = [step.step, `${step.weight} %`, element("strong", step.verdict)];
      (figures.length ? figures : [["–", {}]]).forEach(([version, f], i) => {
        const cells = [version, f.requests ?? "–", percent(f.error_rate),
          typeof f.ttft_p95_ms === "number" ? `${Math.round(f.ttft_p95_ms)} ms` : "–"];
        const tr = row(i ? cells : [...lead, ...cells, why]);
        if (!i && figures.length > 1) {
          for (const n of [0, 1, 2, 7]) tr.cells[n].rowSpan = figures.length;
        }
        tr.dataset.step = step.step;
        rows.push(tr);
      });
    }
    $("analysis").tBodies[0].replaceChildren(...rows);
  }

  const POLICY_SOURCES = { app: "the app's own policy", setting: "the ROLLOUT_POLICY setting (no policy of the app's own)",
    none: "none: rollouts go to all traffic after the smoke chat" };

  /** The app's rollout policy, read only (adapterctl policy set|clear edits it). */
  function renderPolicy(answer) {
    $("policy-section").hidden = !answer;
    if (!answer) return;
    $("policy-title").textContent = `Rollout policy of ${answer.app}`;
    $("policy-source").textContent = answer.error ? `Cannot read it: ${answer.error}`
      : `Source: ${POLICY_SOURCES[answer.source] || answer.source}`;
    $("policy").textContent = answer.effective ? JSON.stringify(answer.effective, null, 2) : "";
    $("policy").hidden = !answer.effective;
  }

  // -- acting ----------------------------------------------------------------------------------------------------
  async function select(id) {
    state.selected = id;
    state.selectedRecord = null;
    try {
      await loadSelected();
    } catch (error) {
      if (!(error instanceof ApiError && refused(error))) say(`Cannot read ${id}: ${error.message}`, true);
    }
    render();
    $("timeline-title").focus();
  }

  /** Ask in the page's modal dialog (focus inside it, Escape cancels, focus back where it was); true if confirmed. */
  function confirmed(title, text, verb) {
    const dialog = $("confirm");
    const opener = document.activeElement && document.activeElement.dataset;
    const back = opener && opener.action ? [opener.action, opener.value] : null;
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = verb;
    dialog.returnValue = "";
    dialog.showModal();
    $("confirm-cancel").focus();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        const again = back && [...document.querySelectorAll("button[data-action]")]
          .find((b) => b.dataset.action === back[0] && b.dataset.value === back[1]);
        if (again) again.focus();
        resolve(dialog.returnValue === "ok");
      }, { once: true });
    });
  }
  $("confirm-ok").addEventListener("click", () => $("confirm").close("ok"));
  $("confirm-cancel").addEventListener("click", () => $("confirm").close("cancel"));

  async function act(question, path, options, done) {
    if (!(await confirmed(...question))) return;
    try {
      const answer = await api(path, options);
      say(done(answer));
      if (answer.id && !answer.id.startsWith("delete-")) state.selected = answer.id;
      state.selectedRecord = null;
    } catch (error) {
      if (!(error instanceof ApiError && refused(error))) say(`Refused: ${error.message}`, true);
    }
    await poll();
  }

  function rollback(app) {
    const served = state.apps.get(app)?.served;
    const from = served ? ` (serving ${served.version || served.adapter})` : "";
    return act([`Roll back ${app}?`, `${app}${from} goes back to the version live before it.`, "Roll back"],
      `${appPath(app)}/rollback`,
      { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" },
      (a) => `Rollback of ${app} requested: record ${a.id}` + (a.rollback_to ? ` (to ${a.rollback_to})` : ""));
  }

  function remove(app) {
    return act([`Delete ${app}?`, "Its server, stored versions, uploads and records are removed.", "Delete"], appPath(app),
      { method: "DELETE" }, (a) => `Deletion of ${app} started: ${a.id}`);
  }

  // -- deploying -------------------------------------------------------------------------------------------------
  // The picked files go as multipart/form-data, one part per file named by its path in the adapter folder, to
  // POST /api/apps/{app}/uploads (orchestrations/uploads.py), which validates them with the orchestrator's rules.
  // Checked here first, cheaply: names, the two files present, none empty, count and total size, the config's rank.
  const APP_NAME = /^[a-z](?!.*--)[a-z0-9-]{0,30}[a-z0-9]$/;
  const ADAPTER_NAME = /^[a-z0-9][a-z0-9\-_.]{0,62}$/;
  const CONFIG = "adapter_config.json";
  const WEIGHTS = "adapter_model.safetensors";
  let uploadRules = null; // GET /api/uploads/rules, read once

  const hiddenName = (name) => /^[._]/.test(name.split("/").pop());

  /** The picked files by name relative to the adapter folder (the picked folder's own name dropped). */
  function picked() {
    const folder = [...$("deploy-folder").files].map((f) => [f.webkitRelativePath.split("/").slice(1).join("/") || f.name, f]);
    const loose = [...$("deploy-files").files].map((f) => [f.name, f]);
    return new Map([...folder, ...loose].filter(([name]) => !hiddenName(name)));
  }

  function showPicked(from) {
    const other = from === "deploy-folder" ? "deploy-files" : "deploy-folder";
    $(other).value = ""; // one way of picking at a time
    const first = $(from).files[0];
    const adapter = $("deploy-adapter");
    if (from === "deploy-folder" && first && (!adapter.value || adapter.dataset.auto)) {
      const name = first.webkitRelativePath.split("/")[0].toLowerCase();
      if (ADAPTER_NAME.test(name)) {
        adapter.value = name;
        adapter.dataset.auto = "1";
      }
    }
    const files = picked();
    const bytes = [...files.values()].reduce((sum, f) => sum + f.size, 0);
    $("deploy-picked").textContent = files.size ? `${files.size} files, ${bytes} bytes: ${[...files.keys()].join(", ")}` : "";
  }

  /** What is wrong with the picked files as far as the browser can tell cheaply (a rule's code and reason), or "". */
  async function problemWith(files) {
    if (!files.size) return "pick the adapter's folder or its files";
    if (!files.has(CONFIG)) return `missing_config: ${CONFIG} is not among the picked files`;
    if (!files.has(WEIGHTS)) return `missing_weights: ${WEIGHTS} is not among the picked files`;
    uploadRules = uploadRules || await api("uploads/rules");
    if (files.size > uploadRules.max_files) return `too_many_files: ${files.size} files, at most ${uploadRules.max_files}`;
    let total = 0;
    for (const [name, file] of files) {
      if (!file.size) return `empty_file: ${name} is empty`;
      total += file.size;
    }
    if (total > uploadRules.max_total_bytes) {
      return `too_large: the files are ${total} bytes, adapters may be ${uploadRules.max_total_bytes} bytes`;
    }
    let config = null;
    try {
      if (files.get(CONFIG).size <= 1 << 20) config = JSON.parse(await files.get(CONFIG).text());
    } catch {
      config = null;
    }
    if (!config || typeof config !== "object" || Array.isArray(config)) return `invalid_config: ${CONFIG} is not a JSON object`;
    const ranks = [config.r, ...Object.values(config.rank_pattern || {})].map(Number).filter(Number.isFinite);
    const rank = Math.max(0, ...ranks);
    if (rank > uploadRules.max_rank) return `rank_too_large: rank ${rank} is over the limit ${uploadRules.max_rank}`;
    return "";
  }

  async function deploy(event) {
    event.preventDefault();
    const app = $("deploy-app").value.trim();
    const adapter = $("deploy-adapter").value.trim();
    const create = $("deploy-create").checked;
    if (!APP_NAME.test(app)) {
      say("Not deployed: the app name must be 2-32 lowercase letters, digits and '-', starting with a letter", true);
      return;
    }
    if (!ADAPTER_NAME.test(adapter) || adapter.includes("..")) {
      say("Not deployed: the adapter name must be lowercase letters, digits, '-', '_' and '.' (at most 63)", true);
      return;
    }
    if (!create && state.appsKnown && !state.apps.has(app)) { // not known: the server answers 404
      say(`Not deployed: there is no app ${app}; tick "create the app if it is new" to create it`, true);
      return;
    }
    const submit = $("deploy-submit");
    submit.disabled = true;
    try {
      const files = picked();
      const problem = await problemWith(files);
      if (problem) {
        say(`Not deployed (checked in the browser): ${problem}`, true);
        return;
      }
      const form = new FormData();
      for (const [name, file] of files) form.append("file", file, name);
      const query = new URLSearchParams({ adapter });
      if (create) query.set("create", "1");
      say(`Uploading ${adapter} to ${app}…`);
      const answer = await api(`${appPath(app)}/uploads?${query}`, { method: "POST", body: form });
      say(`Uploaded ${adapter} to ${app}: record ${answer.id}`);
      state.selected = answer.id;
      state.selectedRecord = null;
      for (const id of ["deploy-folder", "deploy-files", "deploy-adapter"]) $(id).value = "";
      delete $("deploy-adapter").dataset.auto;
      $("deploy-create").checked = false;
      $("deploy-picked").textContent = "";
      await poll();
    } catch (error) {
      if (!(error instanceof ApiError && refused(error))) say(`Refused: ${error.message}`, true);
    } finally {
      submit.disabled = false;
    }
  }

  /** A person's decision on a waiting rollout: POST /api/deployments/{id}/{action} (409 when its stage moved on). */
  function decide(action, id) {
    const [verb, effect] = DECISIONS[action];
    const record = state.selectedRecord && state.selectedRecord.id === id ? state.selectedRecord : {};
    const version = record.version ? ` (${record.version})` : "";
    return act([`${verb} ${id}?`, `${verb} the rollout of ${record.adapter || "the adapter"}${version}. ${effect}`, verb],
      `deployments/${encodeURIComponent(id)}/${action}`,
      { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" },
      (a) => `${verb} sent to ${a.id} (it was ${a.stage})`);
  }

  const actions = { select, rollback, delete: remove };
  for (const action of Object.keys(DECISIONS)) actions[action] = (id) => decide(action, id);

  document.addEventListener("click", (event) => {
    const target = event.target.closest("button[data-action]");
    if (target) actions[target.dataset.action](target.dataset.value);
  });
  $("more").addEventListener("click", () => {
    state.shown += PAGE_ROWS;
    renderRollouts();
  });
  for (const id of ["filter-app", "filter-stage", "filter-text"]) {
    $(id).addEventListener("input", () => {
      state.shown = PAGE_ROWS;
      renderRollouts();
    });
  }
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("deploy-form").addEventListener("submit", deploy);
  for (const id of ["deploy-folder", "deploy-files"]) $(id).addEventListener("change", () => showPicked(id));
  $("deploy-adapter").addEventListener("input", () => delete $("deploy-adapter").dataset.auto);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    $("key").value = "";
    say(key ? "Key kept for this tab." : "No key entered.");
    poll();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    say("Key forgotten.");
  });
  $("filter-stage").append(...STAGES.map((s) => new Option(s, s)));
  poll();
})();
