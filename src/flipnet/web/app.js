// flipnet serve: upload a photo, restore it, compare before/after with a slider, download the PNG.
"use strict";

const $ = (id) => document.getElementById(id);
let maxUploadMb = 20;
let fidelityMethods = new Set();
const methods = new Map();  // name -> {name, status, reason, face_size, fidelity} from the server
let urls = [];  // object URLs of the last result, revoked before the next

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").classList.toggle("error", isError);
}

function setSplit(percent) {
  const p = Math.max(0, Math.min(100, percent));
  $("before-clip").style.clipPath = `inset(0 ${100 - p}% 0 0)`;
  $("handle").style.left = `${p}%`;
  $("split").value = String(Math.round(p));
}

function updateFidelity() {
  const knob = fidelityMethods.has($("method").value);
  $("fidelity").disabled = !knob;
  $("fidelity").title = knob ? "" : "this method has no fidelity knob";
  $("fidelity-value").textContent = $("fidelity").value;
}

// The selector's groups, in order: methods whose weights passed their quality gate, baselines
// without a model, then those that did not pass (never the default).
const GROUPS = [
  ["ready", "Ready"],
  ["baseline", "Baselines (no model)"],
  ["experimental", "Experimental: did not pass the quality gate"],
];

function describeMethod(m) {
  const size = m.face_size ? `${m.face_size} x ${m.face_size} px` : "a size not recorded";
  if (m.status === "baseline") {
    return { lead: "Baseline (no model):", text: `${m.reason}. Faces are processed at ${size} by ` };
  }
  const lead = m.status === "experimental" ? `Experimental: ${m.reason}.` : "";
  return { lead, text: `Faces are restored at ${size} by ` };
}

function updateNote() {
  const m = methods.get($("method").value);
  const note = $("method-note");
  note.replaceChildren();
  if (!m) return;
  const { lead, text } = describeMethod(m);
  if (lead) {
    const strong = document.createElement("strong");
    strong.textContent = lead;
    note.append(strong, " ");
  }
  const code = document.createElement("code");
  code.textContent = m.name;
  note.append(text, code, ".");
  note.dataset.status = m.status;
}

async function loadMethods() {
  try {
    const resp = await fetch("/api/methods");
    const info = await resp.json();
    maxUploadMb = info.max_upload_mb;
    for (const [status, label] of GROUPS) {
      const group = info.methods.filter((m) => m.status === status);
      if (!group.length) continue;
      const optgroup = document.createElement("optgroup");
      optgroup.label = label;
      optgroup.dataset.status = status;
      for (const m of group) {
        const text = status === "experimental" ? `${m.name} (experimental)` : m.name;
        const opt = new Option(text, m.name, m.name === info.default, m.name === info.default);
        opt.title = m.reason;
        opt.dataset.status = status;
        optgroup.append(opt);
        methods.set(m.name, m);
        if (m.fidelity) fidelityMethods.add(m.name);
      }
      $("method").append(optgroup);
    }
    onMethodChange();
  } catch (err) {
    say(`Could not reach the server: ${err}`, true);
  }
}

function onMethodChange() {
  updateFidelity();
  updateNote();
  const m = methods.get($("method").value);
  $("method").title = m ? m.reason : "";
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `HTTP ${resp.status}`;
}

async function restore(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) { say("Choose a photo first.", true); return; }
  if (file.size > maxUploadMb * 1024 * 1024) {
    say(`${file.name}: upload is over the size limit of ${maxUploadMb} MB`, true);
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("method", $("method").value);
  form.append("fidelity", $("fidelity").value);
  form.append("upscale", $("upscale").value);
  if ($("aligned").checked) form.append("aligned", "1");
  $("restore").disabled = true;
  document.body.dataset.state = "busy";
  say(`Restoring ${file.name} ...`);
  const t0 = performance.now();
  try {
    const resp = await fetch("/api/restore", { method: "POST", body: form });
    if (!resp.ok) {
      say(await errorText(resp), true);
      document.body.dataset.state = "error";
      return;
    }
    const blob = await resp.blob();
    urls.forEach((u) => URL.revokeObjectURL(u));
    urls = [URL.createObjectURL(file), URL.createObjectURL(blob)];
    await Promise.all([loadImage($("before"), urls[0]), loadImage($("after"), urls[1])]);
    const stem = file.name.replace(/\.[^.]*$/, "") || "photo";
    $("download").href = urls[1];
    $("download").download = `${stem}_restored.png`;
    const status = resp.headers.get("X-Method-Status");
    $("faces").textContent = `${resp.headers.get("X-Message")} · ` +
      `${$("after").naturalWidth}x${$("after").naturalHeight} px · ${resp.headers.get("X-Method")}` +
      (status === "experimental" ? " (experimental)" : "");
    $("compare").hidden = false;
    $("split").hidden = false;
    $("result-info").hidden = false;
    setSplit(50);
    say(`Done in ${((performance.now() - t0) / 1000).toFixed(1)} s.`);
    document.body.dataset.state = "done";
  } catch (err) {
    say(`Request failed: ${err}`, true);
    document.body.dataset.state = "error";
  } finally {
    $("restore").disabled = !$("file").files.length;
  }
}

function loadImage(img, url) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve();
    img.onerror = () => reject(new Error("the image could not be displayed"));
    img.src = url;
  });
}

function dragSplit(event) {
  const box = $("compare").getBoundingClientRect();
  setSplit(((event.clientX - box.left) / box.width) * 100);
}

$("file").addEventListener("change", () => {
  $("restore").disabled = !$("file").files.length;
  say($("file").files.length ? "" : "Choose a photo first.");
});
$("method").addEventListener("change", onMethodChange);
$("fidelity").addEventListener("input", updateFidelity);
$("controls").addEventListener("submit", restore);
$("split").addEventListener("input", () => setSplit(Number($("split").value)));
$("compare").addEventListener("pointerdown", (e) => {
  $("compare").setPointerCapture(e.pointerId);
  dragSplit(e);
});
$("compare").addEventListener("pointermove", (e) => {
  if ($("compare").hasPointerCapture(e.pointerId)) dragSplit(e);
});
loadMethods();
