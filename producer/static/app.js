// voicefarm web UI: plain JavaScript, no build step, nothing loaded from outside the farm.
"use strict";
const $ = (id) => document.getElementById(id);
const maxChars = Number(document.body.dataset.maxChars || 5000);
let mode = "clone";
let recorded = null; // a WAV Blob recorded in the browser

$("key").value = localStorage.getItem("voicefarm-key") || "";
$("key").addEventListener("change", () => {
  localStorage.setItem("voicefarm-key", $("key").value.trim());
  refreshCatalogue();
});

function headers(json = true) {
  const h = { Authorization: "Bearer " + $("key").value.trim() };
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function api(path, options = {}) {
  const res = await fetch(path, { headers: headers(!(options.body instanceof FormData)), ...options });
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) throw new Error(body?.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${res.status}`);
  return body;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function say(id, text, error = false) {
  $(id).textContent = text;
  $(id).classList.toggle("error", error);
}

// --- tabs ---------------------------------------------------------------------------------------------------
for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll("[role=tab]")) {
      other.setAttribute("aria-selected", String(other === tab));
      $(other.getAttribute("aria-controls")).hidden = other !== tab;
    }
    const panel = tab.getAttribute("aria-controls");
    mode = panel === "panel-instruct" ? "instruct" : "clone";
    $("speak-box").hidden = panel === "panel-jobs" || panel === "panel-batches";
  });
}

// --- text box -----------------------------------------------------------------------------------------------
function count() {
  const n = $("text").value.length;
  $("count").textContent = `${n} / ${maxChars} characters`;
  $("count").classList.toggle("error", n > maxChars);
}
$("text").addEventListener("input", count);
count();

// --- catalogue: voices and instructions ----------------------------------------------------------------------
let catalogueCall = 0; // only the latest refresh fills the pickers: an earlier one may answer last
async function refreshCatalogue(select) {
  if (!$("key").value.trim()) return;
  const call = ++catalogueCall;
  try {
    const voices = await api("/v1/voices");
    const catalogue = await api("/v1/instructions");
    if (call !== catalogueCall) return;
    const picker = $("voice");
    const keep = select || picker.value;
    picker.replaceChildren(new Option("default voice for the language", ""));
    for (const v of voices.voices.filter((v) => v.status === "ready")) {
      picker.append(new Option(`${v.name || v.id} (cloned, ${v.engine})`, v.id));
    }
    for (const v of voices.stock) picker.append(new Option(`${v.id} (stock, ${v.engine})`, v.id));
    picker.value = keep;
    const instruction = $("instruction");
    instruction.replaceChildren(new Option("— choose an instruction —", ""));
    for (const [engine, entry] of Object.entries(catalogue.engines)) {
      const group = document.createElement("optgroup");
      group.label = `${engine} (free-form text: ${entry.free_form})`;
      for (const item of entry.honoured) group.append(new Option(item.label, item.text));
      instruction.append(group);
    }
  } catch (err) {
    say("speak-status", String(err.message), true);
  }
}
$("instruction").addEventListener("change", () => {
  if ($("instruction").value) $("instruct-text").value = $("instruction").value;
});

// --- recording a sample in the browser (PCM captured and written as WAV) -------------------------------------
let recording = null;
$("record").addEventListener("click", async () => {
  if (recording) {
    recorded = await recording.stop();
    recording = null;
    $("record").textContent = "Record a sample";
    say("record-status", `recorded ${(recorded.size / 1024).toFixed(0)} KiB`);
    return;
  }
  try {
    recording = await startRecording();
    $("record").textContent = "Stop recording";
    say("record-status", "recording…");
  } catch (err) {
    say("record-status", `cannot record: ${err.message}`, true);
  }
});

async function startRecording() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const context = new AudioContext();
  const source = context.createMediaStreamSource(stream);
  const node = context.createScriptProcessor(4096, 1, 1);
  const chunks = [];
  node.onaudioprocess = (e) => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
  source.connect(node);
  node.connect(context.destination);
  return {
    async stop() {
      node.disconnect();
      source.disconnect();
      stream.getTracks().forEach((t) => t.stop());
      await context.close();
      return wavBlob(chunks, context.sampleRate);
    },
  };
}

function wavBlob(chunks, rate) {
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * n));
  const text = (o, s) => [...s].forEach((ch, i) => view.setUint8(o + i, ch.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * n, true); text(8, "WAVE"); text(12, "fmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * n, true);
  let offset = 44;
  for (const c of chunks) for (const s of c) { view.setInt16(offset, Math.max(-1, Math.min(1, s)) * 32767, true); offset += 2; }
  return new Blob([view], { type: "audio/wav" });
}

// --- consent: a statement the speaker reads aloud, recorded with MediaRecorder ----------------------------------
const consent = { statement: null, recording: null, recorder: null };
$("consent-get").addEventListener("click", async () => {
  try {
    const lang = /[\u3040-\u30ff]/.test($("transcript").value) ? "ja" : /[\u4e00-\u9fff]/.test($("transcript").value) ? "zh" : "en";
    consent.statement = await api(`/v1/consent/statement?language=${lang}`);
    consent.recording = null;
    $("consent-text").textContent = consent.statement.text;
    $("consent-text").lang = consent.statement.language;
    $("consent-text").hidden = false;
    $("consent-record").disabled = false;
    say("consent-policy", `policy: ${consent.statement.policy}; use it before ${new Date(consent.statement.expires_at).toLocaleTimeString()}`);
    say("consent-status", "");
  } catch (err) {
    say("consent-policy", err.message, true);
  }
});

$("consent-record").addEventListener("click", async () => {
  if (consent.recorder) {
    consent.recorder.stop();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const recorder = new MediaRecorder(stream);
    const parts = [];
    recorder.ondataavailable = (e) => parts.push(e.data);
    recorder.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      consent.recorder = null;
      $("consent-record").textContent = "Record the statement again";
      try {
        // The browser's recording (webm/opus) decoded here and sent as WAV, which the farm reads.
        const context = new AudioContext();
        const decoded = await context.decodeAudioData(await new Blob(parts).arrayBuffer());
        await context.close();
        consent.recording = wavBlob([decoded.getChannelData(0)], decoded.sampleRate);
        say("consent-status", `recorded ${decoded.duration.toFixed(1)} s`);
      } catch (err) {
        say("consent-status", `cannot read the recording: ${err.message}`, true);
      }
    };
    recorder.start();
    consent.recorder = recorder;
    $("consent-record").textContent = "Stop recording";
    say("consent-status", "recording: read the statement aloud…");
  } catch (err) {
    say("consent-status", `cannot record: ${err.message}`, true);
  }
});

// --- cloning --------------------------------------------------------------------------------------------------
$("clone").addEventListener("click", async () => {
  const file = $("sample").files[0] || recorded;
  if (!file) return say("clone-status", "choose or record a sample first", true);
  const form = new FormData();
  form.append("audio", file, file.name || "recording.wav");
  if ($("transcript").value.trim()) form.append("transcript", $("transcript").value.trim());
  if ($("voice-name").value.trim()) form.append("name", $("voice-name").value.trim());
  if (consent.recording) {
    form.append("consent_audio", consent.recording, "consent.wav");
    form.append("consent_id", consent.statement.id);
  }
  if ($("consent-attest").checked) form.append("consent_attested", "true");
  try {
    say("clone-status", "uploading…");
    let voice = await api("/v1/voices", { method: "POST", body: form });
    while (voice.status === "pending") {
      say("clone-status", `building the voice profile of ${voice.id}…`);
      await sleep(700);
      voice = await api(`/v1/voices/${voice.id}`);
    }
    if (voice.status !== "ready") throw new Error(`${voice.error?.code}: ${voice.error?.message}`);
    consent.statement = consent.recording = null; // spent: the next voice needs a new statement
    $("consent-record").disabled = true;
    const notes = (voice.warnings || []).join(" ");
    say("clone-status", `voice ${voice.id} is ready. ${notes}`);
    await refreshCatalogue(voice.id);
  } catch (err) {
    say("clone-status", err.message, true);
  }
});

// --- speaking -------------------------------------------------------------------------------------------------
$("speak").addEventListener("click", async () => {
  // The default priority (5): single jobs go ahead of batch lines anyway, and more is an entitlement of the tenant.
  const body = { text: $("text").value, format: $("format").value };
  if ($("voice").value) body.voice = $("voice").value;
  if (mode === "instruct") {
    const instruct = $("instruct-text").value.trim() || $("instruction").value;
    if (!instruct) return say("speak-status", "choose or write an instruction first", true);
    body.mode = "instruct";
    body.instruct = instruct;
  }
  $("result").hidden = true;
  try {
    let job = await api("/v1/jobs", { method: "POST", body: JSON.stringify(body) });
    while (job.status === "queued" || job.status === "running") {
      say("speak-status", `${job.status} ${Math.round(job.progress * 100)}%`);
      await sleep(500);
      job = await api(`/v1/jobs/${job.id}`);
    }
    if (job.status !== "succeeded") throw new Error(`job ${job.status}: ${job.error?.message || ""}`);
    const audio = await fetch(`/v1/jobs/${job.id}/audio`, { headers: headers(false) });
    const url = URL.createObjectURL(await audio.blob());
    $("player").src = url;
    $("download").href = url;
    $("download").download = `${job.id}.${job.format}`;
    const r = job.result;
    $("similarity").textContent =
      `${r.duration_s} s, ${r.sample_rate} Hz, engine ${r.engine}` +
      (r.similarity != null ? `, speaker similarity ${r.similarity}` : "");
    $("warnings").replaceChildren(...(r.warnings || []).map((w) => Object.assign(document.createElement("li"), { textContent: w })));
    $("result").hidden = false;
    say("speak-status", `job ${job.id} succeeded`);
  } catch (err) {
    say("speak-status", err.message, true);
  }
});

// --- jobs and batches, live -----------------------------------------------------------------------------------
function cells(values) {
  const tr = document.createElement("tr");
  for (const v of values) tr.append(Object.assign(document.createElement("td"), { textContent: v }));
  return tr;
}

async function refreshLists() {
  if (!$("key").value.trim()) return;
  try {
    if (!$("panel-jobs").hidden) {
      const page = await api("/v1/jobs?limit=20");
      $("jobs").replaceChildren(...page.jobs.map((j) => cells([j.id, j.status, `${Math.round(j.progress * 100)}%`, j.voice, j.text.slice(0, 60)])));
    }
    if (!$("panel-batches").hidden) {
      const page = await api("/v1/batches?limit=20");
      $("batches").replaceChildren(...page.batches.map((b) => {
        const row = cells([b.id, b.name, b.status, b.lines, `${Math.round(b.progress * 100)}%`]);
        // The lines the QA gate flagged: their review page (templates/review.html).
        const flagged = b.reviews?.flagged || 0;
        const link = Object.assign(document.createElement("a"), {
          href: `/batches/${b.id}/review`,
          textContent: flagged ? `${b.pending_reviews} of ${flagged} to review` : "review",
        });
        const cell = document.createElement("td");
        cell.append(link);
        row.append(cell);
        return row;
      }));
    }
  } catch (err) {
    /* shown next time something is submitted */
  }
}
setInterval(refreshLists, 2000);
for (const id of ["tab-jobs", "tab-batches"]) $(id).addEventListener("click", refreshLists);

$("upload-batch").addEventListener("click", async () => {
  const file = $("batch-file").files[0];
  if (!file) return say("batch-status", "choose a CSV file first", true);
  const form = new FormData();
  form.append("file", file, file.name);
  if ($("batch-name").value.trim()) form.append("name", $("batch-name").value.trim());
  try {
    let batch = await api("/v1/batches", { method: "POST", body: form });
    while (!batch.done) {
      $("batch-progress").value = batch.progress;
      say("batch-status", `batch ${batch.id}: ${batch.status}, ${Math.round(batch.progress * 100)}% of ${batch.lines} lines`);
      await sleep(700);
      batch = await api(`/v1/batches/${batch.id}`);
    }
    $("batch-progress").value = batch.progress;
    say("batch-status", `batch ${batch.id}: ${batch.status}, ${batch.lines} lines`);
    refreshLists();
  } catch (err) {
    say("batch-status", err.message, true);
  }
});

refreshCatalogue();
