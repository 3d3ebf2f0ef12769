// The preview page. The request body is the state; every edit (a field, a
// drag, a paste) changes the body, and the view, the JSON, the messages and
// the engine's preview are all drawn from it.
"use strict";

const $ = (id) => document.getElementById(id);
const UPSTREAM = "https://openapi.akool.com/api/open/v3/content/image/bg/replace";

let body = {
  canvas_size: "3840x3840",
  color_code: "#aafbe3",
  origin_img: "",
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
  return { x: Number(body[k.x]) || 0, y: Number(body[k.y]) || 0, w: s.w, h: s.h };
}

function cleanBody() {
  const out = {};
  for (const [k, v] of Object.entries(body)) {
    if (v === "" || v === null || v === undefined) continue;
    if (k === "removeBg" && v === false) continue;
    out[k] = v;
  }
  if (!out.template_url) for (const k of ["modify_template_size", "overlay_template_x", "overlay_template_y"]) delete out[k];
  return out;
}

// --- fields <-> body --------------------------------------------------------
function fieldsFromBody() {
  const c = size(body.canvas_size) || { w: "", h: "" };
  $("canvas_w").value = c.w; $("canvas_h").value = c.h;
  $("use_color").checked = !!body.color_code;
  $("color_code").value = body.color_code || "";
  if (/^#[0-9a-fA-F]{6}$/.test(body.color_code || "")) $("color_picker").value = body.color_code.toLowerCase();
  for (const layer of ["template", "foreground"]) {
    const k = layerKeys[layer], prefix = layer === "template" ? "template" : "origin";
    $(k.src).value = body[k.src] || "";
    const s = size(body[k.size]);
    $(`${prefix}_w`).value = s ? s.w : ""; $(`${prefix}_h`).value = s ? s.h : "";
    $(k.x).value = body[k.x] ?? ""; $(k.y).value = body[k.y] ?? "";
  }
  $("removeBg").checked = !!body.removeBg;
  $("webhookUrl").value = body.webhookUrl || "";
}

function bodyFromFields() {
  body.canvas_size = sizeText($("canvas_w").value, $("canvas_h").value);
  body.color_code = $("use_color").checked ? $("color_code").value.trim() : "";
  for (const layer of ["template", "foreground"]) {
    const k = layerKeys[layer], prefix = layer === "template" ? "template" : "origin";
    body[k.src] = $(k.src).value.trim();
    const w = $(`${prefix}_w`).value, h = $(`${prefix}_h`).value;
    body[k.size] = w && h ? sizeText(w, h) : "";
    for (const axis of ["x", "y"]) {
      const v = $(k[axis]).value;
      body[k[axis]] = v === "" ? "" : Math.round(Number(v));
    }
  }
  body.removeBg = $("removeBg").checked;
  body.webhookUrl = $("webhookUrl").value.trim();
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

function showBody() {
  const json = JSON.stringify(cleanBody(), null, 2);
  $("body_json").textContent = json;
  const quoted = JSON.stringify(cleanBody()).replace(/'/g, "'\\''");
  const curl = (url) => `curl -s -X POST ${url} -H 'x-api-key: YOUR_KEY' -H 'content-type: application/json' -d '${quoted}'`;
  $("curl_upstream").textContent = "# upstream\n" + curl(UPSTREAM);
  $("curl_mirror").textContent = "# this mirror\n" + curl(`${location.origin}/api/open/v3/content/image/bg/replace`);
}

function showMessages(envelope) {
  for (const el of document.querySelectorAll(".msg")) { el.textContent = ""; el.className = "msg"; }
  const data = envelope.data || {};
  const put = (problem, kind) => {
    const el = document.querySelector(`.msg[data-for="${problem.field}"]`) || document.querySelector('.msg[data-for="body"]');
    el.textContent += `${kind === "error" ? envelope.code : "warning"}: ${problem.field} ${problem.message} `;
    el.classList.add(kind);
  };
  (data.errors || []).forEach((p) => put(p, "error"));
  (data.warnings || []).forEach((p) => put(p, "warning"));
  $("summary").textContent = envelope.code === 1000 ? "valid (1000)" : `invalid (${envelope.code}): ${envelope.msg}`;
}

// --- the server ---------------------------------------------------------------
async function post(path, payload) {
  return fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(payload) });
}

let timer = null, generation = 0;
function schedule() {
  clearTimeout(timer);
  timer = setTimeout(refresh, 150); // debounced while dragging
}

async function refresh() {
  const mine = ++generation, sent = cleanBody();
  const envelope = await (await post("/preview/validate", { body: sent })).json();
  if (mine !== generation) return;
  showMessages(envelope);
  if (envelope.code !== 1000) return;
  const response = await post("/preview/render", { body: sent, model: $("removeBg_model").value });
  if (mine !== generation) return;
  if ((response.headers.get("content-type") || "").startsWith("image/")) {
    const url = URL.createObjectURL(await response.blob());
    const old = $("preview").src;
    $("preview").src = url;
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    $("preview").dataset.count = String(++previews);
  } else {
    showMessages(await response.json());
  }
}

function update({ fromFields = false } = {}) {
  if (fromFields) bodyFromFields(); else fieldsFromBody();
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
for (const el of document.querySelectorAll("#controls input[type=number], #controls input[type=text], #controls input[type=checkbox]")) {
  if (el.id === "keep_aspect") continue;
  el.addEventListener("input", () => update({ fromFields: true }));
}
$("color_picker").addEventListener("input", () => { $("color_code").value = $("color_picker").value; $("use_color").checked = true; update({ fromFields: true }); });
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
  if (!(response.headers.get("content-type") || "").startsWith("image/")) { showMessages(await response.json()); return; }
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await response.blob());
  a.download = "composite.png";
  a.click();
});
window.addEventListener("resize", layout);
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
