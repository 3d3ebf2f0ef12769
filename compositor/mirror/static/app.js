// The preview page. The request body is the state; every edit (a field, a
// drag, a paste) changes the body, and the view, the JSON, the messages and
// the engine's preview are all drawn from it.
//
// What is typed goes into the body as typed: the page never rounds, clamps or
// drops a value to make it pass. Whether a body passes is the engine's word
// alone (/preview/validate), and the verdict shown is always about the body
// shown (#summary's data-judged holds the body it judged).
"use strict";

const $ = (id) => document.getElementById(id);
const UPSTREAM = "https://openapi.akool.com/api/open/v3/content/image/bg/replace";

let body = {
  canvas_size: "3840x3840",
  color_code: "#aafbe3",
  modify_origin_img_size: "3031x2894",
  overlay_origin_x: 205,
  overlay_origin_y: 497,
};
const natural = { template: null, foreground: null }; // {w, h} of the picked images
let scale = 1; // screen pixels per canvas pixel
let view = { scale: 1, ox: 0, oy: 0 }; // where the canvas sits on the stage
let dragging = false;
let previews = 0;

// --- the body -------------------------------------------------------------
function size(text) {
  const m = /^([1-9][0-9]*)x([1-9][0-9]*)$/.exec(text || "");
  return m ? { w: +m[1], h: +m[2] } : null;
}
const sizeText = (w, h) => `${Math.max(1, Math.round(w))}x${Math.max(1, Math.round(h))}`;
const layerKeys = {
  foreground: { src: "origin_img", size: "modify_origin_img_size", x: "overlay_origin_x", y: "overlay_origin_y" },
  template: { src: "template_url", size: "modify_template_size", x: "overlay_template_x", y: "overlay_template_y" },
};

function layerGeometry(layer) {
  const k = layerKeys[layer];
  if (!body[k.src]) return null;
  const s = size(body[k.size]) || natural[layer];
  if (!s) return null;
  const at = (v) => (Number.isFinite(v) ? v : 0); // only drawing falls back; the body keeps what was typed
  return { x: at(body[k.x]), y: at(body[k.y]), w: s.w, h: s.h };
}

// The body as sent and shown: a key the page leaves out is `undefined`; every
// other value, also "" or null from a pasted body, is kept for the engine to judge.
function cleanBody() {
  const out = {};
  for (const [k, v] of Object.entries(body)) if (v !== undefined) out[k] = v;
  return out;
}
const bodyText = () => JSON.stringify(cleanBody(), null, 2);

// --- fields <-> body --------------------------------------------------------
// Each input writes one key of the body, and only when it is edited: an edit
// never rewrites another key, and a key no field can show (a pasted string
// where a number belongs) stays as pasted until its own field is edited.
const sizeInputs = {
  canvas_size: ["canvas_w", "canvas_h"],
  modify_template_size: ["template_w", "template_h"],
  modify_origin_img_size: ["origin_w", "origin_h"],
};
const offsetKeys = ["overlay_template_x", "overlay_template_y", "overlay_origin_x", "overlay_origin_y"];
const textKeys = ["template_url", "origin_img", "webhookUrl"];
const keyOfInput = { use_color: "color_code", color_code: "color_code", color_picker: "color_code", removeBg: "removeBg" };
for (const [key, [w, h]] of Object.entries(sizeInputs)) keyOfInput[w] = keyOfInput[h] = key;
for (const key of [...offsetKeys, ...textKeys]) keyOfInput[key] = key;
const JSON_NUMBER = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/;

const shown = (v) => (v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v));

// A size's text split at its first "x" joins back to the very same text.
function sides(v) {
  const text = shown(v), at = text.indexOf("x");
  return at < 0 ? [text, ""] : [text.slice(0, at), text.slice(at + 1)];
}

function fieldsFromBody() {
  for (const [key, [w, h]] of Object.entries(sizeInputs)) [$(w).value, $(h).value] = sides(body[key]);
  for (const key of [...offsetKeys, ...textKeys]) $(key).value = shown(body[key]);
  $("use_color").checked = body.color_code !== undefined;
  $("color_code").value = shown(body.color_code);
  if (/^#[0-9a-fA-F]{6}$/.test(shown(body.color_code))) $("color_picker").value = body.color_code.toLowerCase();
  $("removeBg").checked = body.removeBg === true;
}

// The value a key takes from its field(s), as typed; undefined leaves the key out.
function valueOfField(key) {
  if (sizeInputs[key]) {
    const [w, h] = sizeInputs[key].map((id) => $(id).value);
    return w === "" && h === "" ? undefined : `${w}x${h}`;
  }
  if (offsetKeys.includes(key)) {
    const typed = $(key).value;
    if (typed === "") return undefined;
    // A number written as JSON writes it goes in as that number (1.5 stays 1.5);
    // anything else goes in as the text typed, which the engine then refuses.
    return JSON_NUMBER.test(typed) && Number.isFinite(Number(typed)) ? Number(typed) : typed;
  }
  if (key === "color_code") return $("use_color").checked ? $("color_code").value : undefined;
  if (key === "removeBg") return $("removeBg").checked ? true : undefined;
  const typed = $(key).value;
  return typed === "" ? undefined : typed;
}

function bodyFromField(id) {
  const key = keyOfInput[id];
  if (key) body[key] = valueOfField(key);
}

// --- the view ---------------------------------------------------------------
function layout() {
  const canvas = size(body.canvas_size);
  if (!canvas) return;
  // Fit the canvas and every layer, also the parts off the canvas, which are
  // shown dimmed; the view holds still while a layer is dragged.
  const stage = $("stage"), margin = 24;
  if (!dragging) {
    let left = 0, top = 0, right = canvas.w, bottom = canvas.h;
    for (const layer of ["template", "foreground"]) {
      const g = layerGeometry(layer);
      if (!g) continue;
      left = Math.min(left, g.x); top = Math.min(top, g.y);
      right = Math.max(right, g.x + g.w); bottom = Math.max(bottom, g.y + g.h);
    }
    const fit = Math.min((stage.clientWidth - 2 * margin) / (right - left), (stage.clientHeight - 2 * margin) / (bottom - top));
    view = {
      scale: fit,
      ox: (stage.clientWidth - (right - left) * fit) / 2 - left * fit,
      oy: (stage.clientHeight - (bottom - top) * fit) / 2 - top * fit,
    };
  }
  scale = view.scale;
  stage.dataset.scale = String(scale);
  const { ox, oy } = view;
  const place = (el, g) => {
    el.style.left = `${ox + g.x * scale}px`; el.style.top = `${oy + g.y * scale}px`;
    el.style.width = `${g.w * scale}px`; el.style.height = `${g.h * scale}px`;
  };
  place($("frame"), { x: 0, y: 0, w: canvas.w, h: canvas.h });
  for (const [layer, prefix] of [["template", "template"], ["foreground", "origin"]]) {
    const g = layerGeometry(layer), box = $(`${prefix}_box`), ghost = $(`${prefix}_ghost`);
    box.hidden = ghost.hidden = !g;
    if (!g) continue;
    place(box, g); place(ghost, g);
    const src = body[layerKeys[layer].src];
    if (ghost.dataset.src !== src) { ghost.dataset.src = src; ghost.src = viewable(src); }
  }
  const active = $("active_layer").value;
  $("origin_box").classList.toggle("active", active === "foreground");
  $("template_box").classList.toggle("active", active === "template");
}

// The key goes in a header file, as the server's start banner says (`curl -H @FILE`):
// the page shows the file, never a key.
let pageSettings = { key_header_file: null, uploads_url: `${location.origin}/uploads/` };
const UPSTREAM_KEY_FILE = "akool-key.header";

function showBody() {
  const body = cleanBody();
  $("body_json").textContent = bodyText();
  const quoted = JSON.stringify(body).replace(/'/g, "'\\''");
  const header = (file) => (/^[\w@%+=:,./-]+$/.test(file) ? `@${file}` : `'@${file.replace(/'/g, "'\\''")}'`);
  const curl = (url, file) => `curl -s -X POST ${url} -H ${header(file)} -H 'content-type: application/json' -d '${quoted}'`;
  $("curl_upstream").textContent =
    `# upstream (${UPSTREAM_KEY_FILE} holds one line: x-api-key: followed by your Akool key)\n` + curl(UPSTREAM, UPSTREAM_KEY_FILE);
  const mirrorFile = pageSettings.key_header_file;
  $("curl_mirror").textContent =
    (mirrorFile ? "# this mirror (its development client's key file)\n" : "# this mirror (mirror-key.header holds one line: x-api-key: followed by your client's key)\n") +
    curl(`${location.origin}/api/open/v3/content/image/bg/replace`, mirrorFile || "mirror-key.header");
  // An upload lives on this mirror: upstream cannot fetch it.
  const uploaded = ["origin_img", "template_url"].filter((k) => typeof body[k] === "string" && body[k].startsWith(pageSettings.uploads_url));
  $("body_note").hidden = uploaded.length === 0;
  $("body_note").textContent = uploaded.length === 0 ? "" :
    `${uploaded.join(" and ")} ${uploaded.length > 1 ? "name uploads" : "names an upload"} to this mirror (${pageSettings.uploads_url}...), ` +
    "which upstream cannot reach: this body renders here, but upstream would fail to fetch it. " +
    "Put the picture at a URL upstream can reach before sending the body there.";
}

// What the messages show: an envelope (the verdict's, or pre-flight's once it
// has come for the same body: the verdict's with what the sources' headers
// predict added) and, apart from it, why a render failed.
let shownEnvelope = { code: 1000, data: {} }, shownFailure = null;

function drawMessages() {
  for (const el of document.querySelectorAll(".msg")) { el.textContent = ""; el.className = "msg"; }
  const envelope = shownEnvelope, data = envelope.data || {};
  // Each problem on its own line beside its field; a warning says so in words, not by colour alone.
  const put = (problem, kind) => {
    const el = document.querySelector(`.msg[data-for="${problem.field}"]`) || document.querySelector('.msg[data-for="body"]');
    const line = document.createElement("span");
    line.className = `problem ${kind}`;
    line.textContent = `${kind === "error" ? envelope.code : "warning"}: ${problem.field} ${problem.message} `;
    el.append(line);
    el.classList.add(kind);
  };
  (data.errors || []).forEach((p) => put(p, "error"));
  (data.warnings || []).forEach((p) => put(p, "warning"));
  const failed = shownFailure || (envelope.code !== 1000 ? envelope : null);
  $("summary").textContent = failed ? `invalid (${failed.code}): ${failed.msg}` : "valid (1000)";
}

function showMessages(envelope) {
  shownEnvelope = envelope; shownFailure = null;
  drawMessages();
}

// A render (or download) that failed for a body the engine passed: said in the
// summary, and the body's messages (its warnings too) stay.
function showFailure(answer) {
  shownFailure = answer;
  drawMessages();
}

// The verdict for the body now shown, or "checking" while the engine has not judged it.
function showVerdict(envelope, judged) {
  showMessages(envelope);
  $("summary").dataset.judged = judged;
}

// Pre-flight's answer for the body now shown (#summary's data-preflighted holds the body it read for).
function showPreflight(envelope, judged) {
  shownEnvelope = envelope;
  drawMessages();
  $("summary").dataset.preflighted = judged;
}

// --- the server ---------------------------------------------------------------
async function post(path, payload) {
  return fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(payload) });
}

let timer = null, generation = 0;
function schedule() {
  clearTimeout(timer);
  ++generation; // an answer still on its way is about an earlier body
  delete $("summary").dataset.judged;
  delete $("summary").dataset.preflighted;
  $("summary").textContent = "checking...";
  timer = setTimeout(refresh, 150); // debounced while dragging
}

async function refresh() {
  const mine = ++generation, sent = cleanBody(), judged = bodyText();
  let envelope;
  try {
    envelope = await (await post("/preview/validate", { body: sent })).json();
  } catch (err) {
    if (mine === generation) $("summary").textContent = `not checked: ${err.message}`;
    return;
  }
  if (mine !== generation) return;
  showVerdict(envelope, judged);
  if (envelope.code !== 1000) return;
  // The sources' headers are read beside the render, never before the verdict: asked first, so
  // they are read before the render on a busy preview worker.
  const checked = post("/preview/preflight", { body: sent }).then((r) => r.json());
  const rendered = post("/preview/render", { body: sent, model: $("removeBg_model").value });
  checked.then(
    (answer) => { if (mine === generation) showPreflight(answer.data && answer.data.errors ? answer : withNote(envelope, answer), judged); },
    (err) => { if (mine === generation) showPreflight(withNote(envelope, { code: 0, msg: err.message }), judged); },
  );
  const response = await rendered;
  if (mine !== generation) return;
  if ((response.headers.get("content-type") || "").startsWith("image/")) {
    const url = URL.createObjectURL(await response.blob());
    const old = $("preview").src;
    $("preview").src = url;
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    $("preview").dataset.count = String(++previews);
  } else {
    const answer = await response.json();
    if (mine === generation) showFailure(answer);
  }
}

// The verdict, with a warning that pre-flight could not be had (a busy page: 1005).
function withNote(envelope, failed) {
  const note = { field: "body", message: `the sources' headers were not checked (${failed.code}: ${failed.msg})` };
  return { ...envelope, data: { ...envelope.data, warnings: [...((envelope.data || {}).warnings || []), note] } };
}

function update({ fromField = null } = {}) {
  if (fromField) bodyFromField(fromField); else fieldsFromBody();
  layout(); showBody(); schedule();
}

async function upload(file, layer) {
  const answer = await (await fetch("/uploads", { method: "POST", headers: { "content-type": file.type || "application/octet-stream" }, body: file })).json();
  if (answer.code !== 1000) { showMessages({ code: answer.code, msg: answer.msg, data: { errors: [{ field: layerKeys[layer].src, message: answer.msg }] } }); return; }
  const k = layerKeys[layer];
  natural[layer] = { w: answer.data.width, h: answer.data.height };
  body[k.src] = answer.data.url;
  const current = size(body[k.size]);
  // A picture of another shape keeps the layer's width and takes its own aspect ratio.
  body[k.size] = current
    ? sizeText(current.w, Math.max(1, Math.round((current.w * answer.data.height) / answer.data.width)))
    : sizeText(answer.data.width, answer.data.height);
  update();
}

function learnNaturalSize(layer) {
  const src = body[layerKeys[layer].src];
  if (!src || /^file:/.test(src)) return;
  const img = new Image();
  img.onload = () => { natural[layer] = { w: img.naturalWidth, h: img.naturalHeight }; layout(); };
  img.src = viewable(src);
}

// A source the browser cannot fetch itself (an upstream CDN, offline) is shown
// through the mirror, which serves it when its source map covers it.
function viewable(src) {
  if (!src || /^data:/.test(src) || src.startsWith(location.origin + "/")) return src;
  return "/preview/source?url=" + encodeURIComponent(src);
}

// --- dragging -------------------------------------------------------------------
function startDrag(event) {
  const box = event.currentTarget, layer = box.dataset.layer, k = layerKeys[layer];
  const g = layerGeometry(layer);
  if (!g) return;
  const resizing = event.target.classList.contains("handle");
  const start = { px: event.clientX, py: event.clientY, ...g };
  box.setPointerCapture(event.pointerId);
  event.preventDefault();
  dragging = true;
  const move = (e) => {
    const dx = (e.clientX - start.px) / scale, dy = (e.clientY - start.py) / scale;
    if (resizing) {
      let w = Math.max(1, start.w + dx), h = Math.max(1, start.h + dy);
      if ($("keep_aspect").checked) h = Math.max(1, w * start.h / start.w);
      body[k.size] = sizeText(w, h);
    } else {
      body[k.x] = Math.round(start.x + dx);
      body[k.y] = Math.round(start.y + dy);
    }
    update();
  };
  const stop = () => {
    box.removeEventListener("pointermove", move); box.removeEventListener("pointerup", stop);
    dragging = false; layout();
  };
  box.addEventListener("pointermove", move);
  box.addEventListener("pointerup", stop);
}

// --- wiring ---------------------------------------------------------------------
for (const el of document.querySelectorAll("#controls input[type=text], #controls input[type=checkbox]")) {
  if (el.id === "keep_aspect") continue;
  el.addEventListener("input", () => update({ fromField: el.id }));
}
$("color_picker").addEventListener("input", () => { $("color_code").value = $("color_picker").value; $("use_color").checked = true; update({ fromField: "color_code" }); });
$("template_file").addEventListener("change", (e) => e.target.files[0] && upload(e.target.files[0], "template"));
$("origin_file").addEventListener("change", (e) => e.target.files[0] && upload(e.target.files[0], "foreground"));
$("active_layer").addEventListener("change", layout);
for (const box of document.querySelectorAll(".box")) box.addEventListener("pointerdown", startDrag);
$("copy_body").addEventListener("click", async () => {
  const button = $("copy_body");
  try {
    await navigator.clipboard.writeText($("body_json").textContent);
    button.textContent = "Copied";
  } catch (err) {
    button.textContent = "Copy failed: select the text instead";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
});
$("load_body").addEventListener("click", () => {
  try {
    const pasted = JSON.parse($("paste").value);
    if (typeof pasted !== "object" || pasted === null || Array.isArray(pasted)) throw new Error("not a JSON object");
    body = pasted;
    natural.template = natural.foreground = null;
    learnNaturalSize("template"); learnNaturalSize("foreground");
    update();
  } catch (err) {
    showMessages({ code: 1003, msg: `body: ${err.message}`, data: { errors: [{ field: "body", message: `is not valid JSON: ${err.message}` }] } });
  }
});
$("download").addEventListener("click", async () => {
  const response = await post("/preview/full", { body: cleanBody(), model: $("removeBg_model").value });
  if (!(response.headers.get("content-type") || "").startsWith("image/")) { showFailure(await response.json()); return; }
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await response.blob());
  a.download = "composite.png";
  a.click();
});
window.addEventListener("resize", layout);
fetch("/preview/settings").then((r) => r.json()).then((loaded) => { pageSettings = { ...pageSettings, ...loaded }; showBody(); });
// removeBg's model is the server's setting for API jobs; the page may try each one.
fetch("/preview/models").then((r) => r.json()).then((listed) => {
  for (const model of listed.models) {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = model.name + (model.installed ? "" : " (not installed)");
    option.title = model.good_for;
    option.selected = model.name === listed.default;
    $("removeBg_model").append(option);
  }
});
$("removeBg_model").addEventListener("change", () => { if (body.removeBg) schedule(); });
let examples = {};
fetch("/static/examples.json").then((r) => r.json()).then((loaded) => {
  examples = loaded;
  for (const name of Object.keys(examples)) {
    const option = document.createElement("option");
    option.value = name; option.textContent = name.replace(/^example-/, "").replace(/-/g, " ");
    $("example").append(option);
  }
});
$("example").addEventListener("change", () => {
  if (!examples[$("example").value]) return;
  body = JSON.parse(JSON.stringify(examples[$("example").value]));
  natural.template = natural.foreground = null;
  learnNaturalSize("template"); learnNaturalSize("foreground");
  update();
});
update();
