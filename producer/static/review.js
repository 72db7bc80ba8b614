// voicefarm review page: the batch lines the QA gate flagged, one after another, with the keyboard.
// Plain JavaScript, no build step; it asks the API with the key the web UI keeps (localStorage "voicefarm-key").
"use strict";
const $ = (id) => document.getElementById(id);
const batchId = document.body.dataset.batchId;
const KEY = "voicefarm-key";
const FINAL = new Set(["succeeded", "failed", "canceled"]);

const state = {
  lines: new Map(), // line id -> the line as GET /v1/batches/{id}/review?all=true shows it
  shown: new Set(), // line ids on the page: flagged once, or re-rendered here
  order: [], // line ids in file order
  views: new Map(), // line id -> {article, ...elements, audioFor}
  current: null, // the selected line id
  batch: null,
  busy: false,
};

$("key").value = localStorage.getItem(KEY) || "";
$("key").addEventListener("change", () => {
  localStorage.setItem(KEY, $("key").value.trim());
  load();
});
$("show-all").addEventListener("change", render);

function headers(json = true) {
  const h = { Authorization: "Bearer " + $("key").value.trim() };
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function api(path, options = {}) {
  const res = await fetch(path, { headers: headers(), ...options });
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) throw new Error(body?.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${res.status}`);
  return body;
}

function say(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};

// --- loading ----------------------------------------------------------------------------------------------
async function load() {
  if (!$("key").value.trim()) return say("enter the API key to load the batch", true);
  try {
    const [queue, batch] = await Promise.all([
      api(`/v1/batches/${batchId}/review?all=true`),
      api(`/v1/batches/${batchId}`),
    ]);
    state.batch = batch;
    $("batch-name").textContent = queue.name ? `· ${queue.name}` : "";
    state.order = queue.lines.map((l) => l.line_id);
    for (const line of queue.lines) {
      state.lines.set(line.line_id, line);
      if (line.qa === "needs_review" || line.review) state.shown.add(line.line_id);
    }
    summary();
    render();
    if (!state.current || !visible().includes(state.current)) select(firstPending() ?? visible()[0] ?? null);
    say("");
  } catch (err) {
    say(err.message, true);
  }
}

function summary() {
  const b = state.batch;
  if (!b) return;
  const r = b.reviews || { flagged: 0, approved: 0, rejected: 0 };
  const running = b.done ? `batch ${b.status}` : `batch ${b.status}, ${Math.round(b.progress * 100)}% done`;
  $("summary").textContent =
    `${b.pending_reviews} pending of ${r.flagged} flagged · ${r.approved} approved · ${r.rejected} rejected · ${running}`;
}

// While the batch runs or a re-rendered take is on its way, look again every two seconds.
setInterval(() => {
  const open = [...state.shown].some((id) => !FINAL.has(state.lines.get(id)?.status));
  if (!state.busy && state.batch && (!state.batch.done || open)) load();
}, 2000);

// --- the list ---------------------------------------------------------------------------------------------
function visible() {
  return state.order.filter((id) => $("show-all").checked || state.shown.has(id));
}

function firstPending() {
  return visible().find((id) => needsDecision(state.lines.get(id)));
}

const needsDecision = (line) => line && line.status === "succeeded" && line.qa === "needs_review" && !line.review;

let rendered = null; // the ids on the page: rebuilt only when they change, so focus and playback are kept

function render() {
  const ids = visible();
  const main = $("lines");
  if (rendered !== ids.join("\n")) {
    rendered = ids.join("\n");
    main.replaceChildren(...ids.map((id) => view(id).article));
    if (!ids.length) main.append(el("p", { className: "muted", textContent: "No line waits for review." }));
  }
  for (const id of ids) fill(id);
  if (state.current) view(state.current).article.setAttribute("aria-current", "true");
}

function view(id) {
  if (state.views.has(id)) return state.views.get(id);
  const v = {};
  v.article = el("article", { className: "line", tabIndex: -1 });
  v.article.dataset.lineId = id;
  v.title = el("h2");
  v.audio = el("audio", { controls: true, preload: "none" });
  v.audio.setAttribute("aria-label", `Take of line ${id}`);
  v.script = el("dd", { className: "script" });
  v.spoken = el("dd", { className: "spoken" });
  v.heard = el("dd", { className: "heard" });
  v.texts = el("dl", {}, el("dt", { textContent: "Script" }), v.script,
    el("dt", { textContent: "Spoken (normalised), words not heard struck out" }), v.spoken,
    el("dt", { textContent: "Heard by the recogniser, words not in the script marked" }), v.heard);
  v.checks = el("table", { className: "checks" });
  v.note = el("input", { type: "text", className: "note", maxLength: 2000, placeholder: "note (optional)" });
  v.note.setAttribute("aria-label", `Note on line ${id}`);
  v.approve = el("button", { type: "button", className: "approve", textContent: "Approve (a)" });
  v.reject = el("button", { type: "button", className: "reject", textContent: "Reject (r)" });
  v.edit = el("button", { type: "button", className: "edit", textContent: "Re-render with edits (e)" });
  v.approve.addEventListener("click", () => { select(id); decide("approved"); });
  v.reject.addEventListener("click", () => { select(id); decide("rejected"); });
  v.edit.addEventListener("click", () => { select(id); openEdit(); });
  v.text = el("textarea", { rows: 3 });
  v.seed = el("input", { type: "number", step: 1, min: 0 });
  v.speed = el("input", { type: "number", step: 0.01, min: 0.5, max: 2 });
  const field = (label, input) => el("label", {}, label, input);
  v.form = el("form", { className: "edit-form", hidden: true },
    field("Text", v.text), el("div", { className: "row" }, field("Seed", v.seed), field("Speed", v.speed)),
    el("div", { className: "row" }, el("button", { type: "submit", textContent: "Re-render" }),
      el("button", { type: "button", className: "cancel", textContent: "Cancel (Esc)" })));
  v.form.addEventListener("submit", (e) => { e.preventDefault(); select(id); rerender(); });
  v.form.querySelector(".cancel").addEventListener("click", closeEdit);
  v.text.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); rerender(); }
  });
  v.lineStatus = el("p", { className: "line-status", role: "status" });
  v.article.append(v.title, v.audio, v.texts, v.checks, v.note,
    el("div", { className: "row" }, v.approve, v.reject, v.edit), v.form, v.lineStatus);
  v.article.addEventListener("click", (e) => {
    if (!e.target.closest("button, input, textarea, audio, form")) select(id);
  });
  v.audioFor = null;
  state.views.set(id, v);
  return v;
}

function fill(id) {
  const line = state.lines.get(id);
  const v = view(id);
  if (!line) return;
  const qaTakes = line.qa_takes ? ` · ${line.qa_takes} QA take${line.qa_takes === 1 ? "" : "s"}` : "";
  const verdict = line.qa === "needs_review" ? "flagged" : line.qa === "passed" ? "passed the gate" : "";
  v.title.replaceChildren(
    el("span", { className: "line-id", textContent: id }),
    el("span", { className: "take", textContent: ` take ${line.take}` }),
    el("span", { className: "muted", textContent: `${qaTakes} · ${line.status}${verdict ? " · " + verdict : ""}` }),
  );
  if (line.review) {
    const r = line.review;
    const who = r.by?.label || r.by?.key_id || "?";
    const badge = el("span", { className: `decision ${r.decision}`, textContent: r.decision });
    badge.title = `${r.decision} by ${who} at ${r.at}${r.note ? ": " + r.note : ""}`;
    v.title.append(" ", badge);
  }
  v.script.textContent = line.text;
  const spoken = line.normalized_text || line.text;
  const [said, heard] = diff(spoken, line.heard || "", ["zh", "ja"].includes(line.language));
  v.spoken.replaceChildren(...said);
  v.heard.replaceChildren(...(line.heard == null ? [el("span", { className: "muted", textContent: "—" })] : heard));
  const failed = Object.entries(line.checks || {}).filter(([, c]) => !c.pass);
  v.checks.replaceChildren(...(failed.length
    ? [el("caption", { textContent: "Failed checks" }),
       el("tr", {}, ...["check", "value", "threshold"].map((t) => el("th", { textContent: t }))),
       ...failed.map(([name, c]) => el("tr", { className: "failed" },
         el("td", { textContent: name }), el("td", { textContent: c.value == null ? "—" : String(c.value) }),
         el("td", { textContent: `${c.bound === "min" ? "≥" : "≤"} ${c.threshold}` })))]
    : [el("caption", { textContent: line.qa ? "No failed check" : "Not checked by the gate" })]));
  const decidable = line.status === "succeeded" && line.qa === "needs_review";
  v.approve.disabled = v.reject.disabled = !decidable;
  v.edit.disabled = line.status !== "succeeded" && line.status !== "failed";
  v.lineStatus.textContent = FINAL.has(line.status) ? "" : `take ${line.take} is ${line.status}…`;
  if (v.audioFor && v.audioFor !== line.job_id) resetAudio(v);
}

// --- a word (zh/ja: character) diff of what should have been said and what was heard ----------------------
const norm = (s) => s.normalize("NFKC").toLowerCase().replace(/[^\p{L}\p{N}']/gu, "");

function tokens(text, chars) {
  const parts = chars ? [...text].filter((c) => c.trim()) : text.split(/\s+/).filter(Boolean);
  return parts.map((shown) => ({ shown, key: norm(shown) }));
}

function diff(a, b, chars) {
  const x = tokens(a, chars);
  const y = tokens(b, chars);
  const xi = x.map((t, i) => i).filter((i) => x[i].key);
  const yi = y.map((t, i) => i).filter((i) => y[i].key);
  const matchedX = new Set();
  const matchedY = new Set();
  const n = xi.length, m = yi.length;
  if (n * m <= 4_000_000) {
    // Longest common subsequence over the tokens that are words (punctuation alone never counts as a miss).
    const table = new Int32Array((n + 1) * (m + 1));
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        table[i * (m + 1) + j] = x[xi[i]].key === y[yi[j]].key
          ? table[(i + 1) * (m + 1) + j + 1] + 1
          : Math.max(table[(i + 1) * (m + 1) + j], table[i * (m + 1) + j + 1]);
      }
    }
    let i = 0, j = 0;
    while (i < n && j < m) {
      if (x[xi[i]].key === y[yi[j]].key) { matchedX.add(xi[i++]); matchedY.add(yi[j++]); }
      else if (table[(i + 1) * (m + 1) + j] >= table[i * (m + 1) + j + 1]) i++;
      else j++;
    }
  } else {
    x.forEach((t, i) => matchedX.add(i));
    y.forEach((t, i) => matchedY.add(i));
  }
  const sep = chars ? "" : " ";
  const out = (list, matched, tag) => list.flatMap((t, i) => {
    const node = !t.key || matched.has(i) ? document.createTextNode(t.shown) : el(tag, { textContent: t.shown });
    return i ? [document.createTextNode(sep), node] : [node];
  });
  return [out(x, matchedX, "del"), out(y, matchedY, "ins")];
}

// --- selection, audio, decisions, re-renders -----------------------------------------------------------------
function select(id) {
  if (state.current && state.views.has(state.current)) view(state.current).article.removeAttribute("aria-current");
  state.current = id;
  if (!id) return;
  const v = view(id);
  v.article.setAttribute("aria-current", "true");
  v.article.scrollIntoView({ block: "nearest" });
  if (!v.article.contains(document.activeElement)) v.article.focus({ preventScroll: true });
  loadAudio(id);
}

function move(step) {
  const ids = visible();
  if (!ids.length) return;
  const at = ids.indexOf(state.current);
  select(ids[Math.min(ids.length - 1, Math.max(0, at < 0 ? 0 : at + step))]);
}

function resetAudio(v) {
  v.audio.pause();
  if (v.audio.src.startsWith("blob:")) URL.revokeObjectURL(v.audio.src);
  v.audio.removeAttribute("src");
  v.audioFor = null;
}

// The audio comes from /v1/jobs/{id}/audio with the key, as a blob: the page needs nothing outside the farm.
async function loadAudio(id) {
  const line = state.lines.get(id);
  const v = view(id);
  if (!line?.audio_path || v.audioFor === line.job_id) return v.loading;
  v.audioFor = line.job_id;
  v.loading = (async () => {
    const res = await fetch(line.audio_path, { headers: headers(false) });
    if (!res.ok) throw new Error(`audio: HTTP ${res.status}`);
    const url = URL.createObjectURL(await res.blob());
    if (v.audioFor === line.job_id) v.audio.src = url;
    else URL.revokeObjectURL(url);
  })().catch((err) => { v.audioFor = null; say(err.message, true); });
  return v.loading;
}

async function togglePlay() {
  if (!state.current) return;
  const v = view(state.current);
  await loadAudio(state.current);
  if (!v.audio.src) return;
  if (v.audio.paused) v.audio.play().catch((err) => say(`cannot play: ${err.message}`, true));
  else v.audio.pause();
}

async function decide(decision) {
  const id = state.current;
  const line = id && state.lines.get(id);
  if (!line || !(line.status === "succeeded" && line.qa === "needs_review")) return;
  const v = view(id);
  const body = { decision };
  if (v.note.value.trim()) body.note = v.note.value.trim();
  state.busy = true;
  try {
    const updated = await api(`/v1/batches/${batchId}/lines/${encodeURIComponent(id)}/review`, {
      method: "POST", body: JSON.stringify(body),
    });
    state.lines.set(id, updated);
    fill(id);
    say(`${id} ${decision}`);
    state.batch = await api(`/v1/batches/${batchId}`);
    summary();
    v.audio.pause();
    const ids = visible();
    const next = ids.slice(ids.indexOf(id) + 1).find((other) => needsDecision(state.lines.get(other)));
    select(next ?? ids[Math.min(ids.length - 1, ids.indexOf(id) + 1)]);
  } catch (err) {
    say(err.message, true);
  } finally {
    state.busy = false;
  }
}

function openEdit() {
  const line = state.current && state.lines.get(state.current);
  if (!line) return;
  const v = view(state.current);
  v.text.value = line.text;
  v.seed.value = line.seed ?? "";
  v.speed.value = line.speed ?? "";
  v.form.hidden = false;
  v.text.focus();
}

function closeEdit() {
  if (!state.current) return;
  const v = view(state.current);
  v.form.hidden = true;
  v.article.focus({ preventScroll: true });
}

async function rerender() {
  const id = state.current;
  const line = id && state.lines.get(id);
  if (!line) return;
  const v = view(id);
  const changes = { text: v.text.value.trim() || line.text };
  if (v.seed.value !== "" && Number(v.seed.value) !== line.seed) changes.seed = Number(v.seed.value);
  if (v.speed.value !== "" && Number(v.speed.value) !== line.speed) changes.speed = Number(v.speed.value);
  state.busy = true;
  try {
    const take = await api(`/v1/batches/${batchId}/lines/${encodeURIComponent(id)}`, {
      method: "POST", body: JSON.stringify(changes),
    });
    // The new take goes through the gate again, with no decision: follow it until it is final.
    state.lines.set(id, {
      ...line, job_id: take.id, take: take.batch.take, status: take.status, text: take.text, seed: changes.seed ?? line.seed,
      speed: take.speed, qa: null, qa_takes: null, checks: {}, heard: null, normalized_text: null, review: null,
      audio_path: null, audio_url: null,
    });
    state.shown.add(id);
    state.batch = { ...state.batch, done: false };
    v.form.hidden = true;
    fill(id);
    v.article.focus({ preventScroll: true });
    say(`${id}: take ${take.batch.take} is on its way`);
  } catch (err) {
    say(err.message, true);
  } finally {
    state.busy = false;
  }
}

// --- the keyboard ---------------------------------------------------------------------------------------------
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const typing = e.target.closest?.("input, textarea, select");
  if (typing) {
    if (e.key === "Escape" && e.target.closest("form.edit-form")) closeEdit();
    return;
  }
  const actions = {
    " ": togglePlay, p: togglePlay, a: () => decide("approved"), r: () => decide("rejected"), e: openEdit,
    j: () => move(1), ArrowDown: () => move(1), k: () => move(-1), ArrowUp: () => move(-1),
  };
  const action = actions[e.key];
  if (!action) return;
  e.preventDefault(); // no scrolling on space and arrows, no button pressed twice
  action();
});

load();
