// Trajectory drawing widget for the EasyAnimateTrajectory node.
//
// A canvas (a DOM widget) over the node's reference image on which the user draws one track per moving object.
// The drawing lives in the node's `trajectory` STRING widget, hidden but saved with the workflow, in the format
// easyanimate_core/trajectory.py parses (version 1, coordinates normalised to 0..1 of the video frame):
//   {"version": 1, "canvas": {"width": W, "height": H}, "frames": F, "tracks": [{"points": [[x, y], ...]}, ...]}
// The Python side never needs this file: the JSON alone decides the control video.
//
// splinePolyline() and resampleTrack() reproduce resample_track() of easyanimate_core/trajectory.py number for
// number (its module docstring describes the algorithm); tests/test_trajectory_widget.py compares the two.

import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_TYPE = "EasyAnimateTrajectory";
const FORMAT_VERSION = 1;
const SPLINE_TENSION = 0.5;
const SAMPLES_PER_SEGMENT = 64;
const UI_IMAGE_KEY = "trajectory_image";
const MIN_HEIGHT = 260;
const DEFAULT_NODE_SIZE = [480, 560];
const POINT_RADIUS = 6;
const HIT_RADIUS = 10;
const CURVE_HIT = 7;
const FRAME_PAD = 6;
const UNDO_LIMIT = 200;
const COORD_DIGITS = 1e5;
// The image shown on each node, by graph and node id: ComfyUI's undo and redo rebuild the nodes from the workflow,
// which holds the drawing but not the image (a dropped image exists only in this page).
const shownImages = new Map();
// The server images among them (a run's preview, /view URLs) also go to the tab's sessionStorage, so a page reload,
// which restores the workflow but not this page's memory, shows them again; dropped images (blob: URLs) cannot.
const STORED_IMAGES = "EasyAnimate.trajectoryImages";
const STORED_LIMIT = 64;

function storedImages() {
  try {
    return JSON.parse(sessionStorage.getItem(STORED_IMAGES) ?? "{}") ?? {};
  } catch {
    return {};
  }
}

function storeImage(key, url) {
  if (url.startsWith("blob:")) return;
  const images = storedImages();
  delete images[key];
  images[key] = url; // newest last: the oldest go first past the limit
  const keys = Object.keys(images);
  for (const old of keys.slice(0, Math.max(0, keys.length - STORED_LIMIT))) delete images[old];
  try {
    sessionStorage.setItem(STORED_IMAGES, JSON.stringify(images));
  } catch {
    // storage full or disabled: the image is still shown, only not after a reload
  }
}
const RESIZE_MODES = ["crop", "pad", "stretch"]; // the first is the default, as in easyanimate_core/resize.py
const COLORS = ["#ff5a5a", "#4fc3f7", "#9ccc65", "#ffca28", "#ba68c8", "#ff8a65", "#4db6ac", "#f06292"];

// ------------------------------------------------------------------------------------------------------------
// Geometry (pure; exported for the tests)

/** Control points [[x, y], ...] -> vertices of the drawn and sampled curve (64 (n - 1) + 1 for n >= 3). */
export function splinePolyline(points) {
  const n = points.length;
  if (n < 3) return points.map(([x, y]) => [x, y]);
  const a = (1 - SPLINE_TENSION) / 2;
  const tangent = points.map((_, i) =>
    i === 0 || i === n - 1 ? [0, 0] : [a * (points[i + 1][0] - points[i - 1][0]), a * (points[i + 1][1] - points[i - 1][1])],
  );
  const third = (from, to) => [from[0] + (2 / 3) * (to[0] - from[0]), from[1] + (2 / 3) * (to[1] - from[1])];
  // The first and last segments are quadratic Beziers (protovis' cardinal ends), written as cubics.
  const firstQ = [points[1][0] - (2 / 3) * tangent[1][0], points[1][1] - (2 / 3) * tangent[1][1]];
  const lastQ = [points[n - 2][0] + (2 / 3) * tangent[n - 2][0], points[n - 2][1] + (2 / 3) * tangent[n - 2][1]];
  const out = [[points[0][0], points[0][1]]];
  for (let s = 0; s < n - 1; s++) {
    const p0 = points[s];
    const p3 = points[s + 1];
    let b1 = [p0[0] + tangent[s][0], p0[1] + tangent[s][1]];
    let b2 = [p3[0] - tangent[s + 1][0], p3[1] - tangent[s + 1][1]];
    if (s === 0) {
      b1 = third(points[0], firstQ);
      b2 = third(points[1], firstQ);
    }
    if (s === n - 2) {
      b1 = third(points[n - 2], lastQ);
      b2 = third(points[n - 1], lastQ);
    }
    for (let k = 1; k <= SAMPLES_PER_SEGMENT; k++) {
      const u = k / SAMPLES_PER_SEGMENT;
      const v = 1 - u;
      const w0 = v ** 3;
      const w1 = 3 * v ** 2 * u;
      const w2 = 3 * v * u ** 2;
      const w3 = u ** 3;
      out.push([
        w0 * p0[0] + w1 * b1[0] + w2 * b2[0] + w3 * p3[0],
        w0 * p0[1] + w1 * b1[1] + w2 * b2[1] + w3 * p3[1],
      ]);
    }
  }
  return out;
}

/** One track at `frames` positions along its curve, equally spaced by arc length (x scaled by `aspect`). */
export function resampleTrack(points, frames, aspect = 1) {
  if (!points.length) return [];
  const poly = splinePolyline(points);
  const pieces = [];
  for (let k = 0; k + 1 < poly.length; k++) {
    pieces.push(Math.hypot((poly[k + 1][0] - poly[k][0]) * aspect, poly[k + 1][1] - poly[k][1]));
  }
  const total = pieces.reduce((sum, p) => sum + p, 0);
  const first = [poly[0][0], poly[0][1]];
  if (frames === 1 || poly.length === 1 || total === 0) return Array.from({ length: frames }, () => [...first]);
  const cumulative = [0];
  for (const p of pieces) cumulative.push(cumulative[cumulative.length - 1] + p);
  const length = cumulative[cumulative.length - 1];
  const out = [];
  let k = 0;
  for (let j = 0; j < frames; j++) {
    const target = (length * j) / (frames - 1);
    while (k + 1 < pieces.length && cumulative[k + 1] <= target) k++;
    const piece = pieces[k];
    const f = piece > 0 ? Math.min(Math.max((target - cumulative[k]) / piece, 0), 1) : 0;
    out.push([poly[k][0] + f * (poly[k + 1][0] - poly[k][0]), poly[k][1] + f * (poly[k + 1][1] - poly[k][1])]);
  }
  out[0] = first;
  out[frames - 1] = [poly[poly.length - 1][0], poly[poly.length - 1][1]];
  return out;
}

/**
 * Where an image of iw x ih goes in the frame `rect` under a resize mode, as easyanimate_core/resize.py fits the
 * reference image: [sx, sy, sw, sh, dx, dy, dw, dh] for ctx.drawImage. crop: the centred part with the frame's
 * aspect ratio, on the whole frame; pad: the whole image scaled to fit, centred (the rest is black); stretch: the
 * whole image on the whole frame.
 */
export function fitImage(iw, ih, rect, mode) {
  const frame = [rect.x, rect.y, rect.width, rect.height];
  if (mode === "stretch") return [0, 0, iw, ih, ...frame];
  if (mode === "pad") {
    const scale = Math.min(rect.width / iw, rect.height / ih);
    const [dw, dh] = [iw * scale, ih * scale];
    return [0, 0, iw, ih, rect.x + (rect.width - dw) / 2, rect.y + (rect.height - dh) / 2, dw, dh];
  }
  if (iw * rect.height > ih * rect.width) {
    const sw = (ih * rect.width) / rect.height;
    return [(iw - sw) / 2, 0, sw, ih, ...frame];
  }
  const sh = (iw * rect.height) / rect.width;
  return [0, (ih - sh) / 2, iw, sh, ...frame];
}

/** Parse the widget's JSON (version 1 only): {tracks, canvas, frames}; throws Error naming what is wrong. */
export function parseDrawing(text) {
  let doc;
  try {
    doc = JSON.parse(text);
  } catch (error) {
    throw new Error(`not JSON (${error.message})`);
  }
  if (!doc || typeof doc !== "object" || Array.isArray(doc) || doc.version !== FORMAT_VERSION) {
    throw new Error(`not the widget's format (version ${FORMAT_VERSION})`);
  }
  if (!Array.isArray(doc.tracks)) throw new Error('"tracks" must be a list');
  const tracks = doc.tracks.map((track, t) => {
    if (!track || !Array.isArray(track.points)) throw new Error(`track ${t + 1} has no "points" list`);
    return track.points.map((point, p) => {
      const ok = Array.isArray(point) && point.length === 2 && point.every((v) => typeof v === "number" && v >= 0 && v <= 1);
      if (!ok) throw new Error(`track ${t + 1}, point ${p + 1}: expected [x, y] in 0..1`);
      return [point[0], point[1]];
    });
  });
  const c = doc.canvas;
  const canvas = c && c.width > 0 && c.height > 0 ? { width: c.width, height: c.height } : null;
  const frames = Number.isInteger(doc.frames) && doc.frames > 0 ? doc.frames : null;
  return { tracks, canvas, frames };
}

/** The widget's JSON for non-empty tracks; parseDrawing() and the Python parser read it back. */
export function serializeDrawing({ tracks, canvas, frames }) {
  const doc = { version: FORMAT_VERSION };
  if (canvas) doc.canvas = { width: canvas.width, height: canvas.height };
  if (frames) doc.frames = frames;
  doc.tracks = tracks.filter((t) => t.length).map((t) => ({ points: t.map(([x, y]) => [x, y]) }));
  return JSON.stringify(doc);
}

function quantize(v) {
  return Math.round(Math.min(Math.max(v, 0), 1) * COORD_DIGITS) / COORD_DIGITS;
}

function distanceToSegment(p, a, b) {
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const len2 = dx * dx + dy * dy;
  const t = len2 > 0 ? Math.min(Math.max(((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2, 0), 1) : 0;
  return Math.hypot(p[0] - a[0] - t * dx, p[1] - a[1] - t * dy);
}

/** Label every `step`-th frame so that labels are at least `minGap` pixels apart along the path. */
function labelStep(spacing, minGap = 26) {
  for (const step of [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 25, 30, 40, 50, 60, 80, 100]) {
    if (step * spacing >= minGap) return step;
  }
  return 100;
}

// ------------------------------------------------------------------------------------------------------------
// The editor

const STYLE = `
.ea-traj { display: flex; flex-direction: column; gap: 4px; box-sizing: border-box; font: 12px sans-serif;
  color: var(--input-text, #ddd); user-select: none; }
.ea-traj-bar { display: flex; flex-wrap: wrap; align-items: center; gap: 4px; flex: none; }
.ea-traj-bar button { font: inherit; padding: 2px 8px; border-radius: 4px; cursor: pointer;
  border: 1px solid var(--border-color, #555); background: var(--comfy-input-bg, #222); color: inherit; }
.ea-traj-bar button:hover { filter: brightness(1.3); }
.ea-traj-bar button:disabled { opacity: 0.4; cursor: default; filter: none; }
.ea-traj-chips { display: flex; gap: 3px; flex-wrap: wrap; }
.ea-traj-chips button { min-width: 24px; padding: 2px 6px; font-weight: bold; }
.ea-traj-chips button.active { outline: 2px solid #fff; outline-offset: -1px; }
.ea-traj-holder { position: relative; flex: 1 1 auto; min-height: 120px; }
.ea-traj-holder canvas { position: absolute; inset: 0; width: 100%; height: 100%; outline: none;
  cursor: crosshair; touch-action: none; }
.ea-traj-status { flex: none; opacity: 0.8; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
`;

function addStyle() {
  if (document.getElementById("ea-traj-style")) return;
  const style = document.createElement("style");
  style.id = "ea-traj-style";
  style.textContent = STYLE;
  document.head.append(style);
}

function element(tag, props = {}, children = []) {
  const el = Object.assign(document.createElement(tag), props);
  el.append(...children);
  return el;
}

export class TrajectoryEditor {
  constructor(node, textWidget) {
    this.node = node;
    this.textWidget = textWidget;
    this.tracks = [];
    this.active = 0;
    this.selected = null; // {track, point}
    this.history = [];
    this.canvasSize = null; // the "canvas" of the stored JSON
    this.text = null; // the JSON last read from or written to the text widget
    this.problem = "";
    this.image = null;
    this.imageUrl = null;
    this.restoredFrom = null;
    this.drag = null;
    this.hover = null;
    this.renderKey = "";
    this.build();
    this.sync();
  }

  // -- DOM ---------------------------------------------------------------------------------------------------

  build() {
    addStyle();
    const button = (text, title, onClick) => {
      const b = element("button", { textContent: text, title, type: "button" });
      b.addEventListener("click", (e) => {
        e.stopPropagation();
        this.sync();
        onClick();
        this.canvas.focus({ preventScroll: true }); // the Delete key keeps working after a button
      });
      return b;
    };
    this.chips = element("span", { className: "ea-traj-chips" });
    this.buttons = {
      add: button("+ Track", "Start a new track (one per moving object)", () => this.addTrack()),
      remove: button("− Track", "Delete the selected track", () => this.deleteTrack()),
      point: button("Delete point", "Delete the selected point (also: right-click or Alt-click a point, Delete key)", () =>
        this.deleteSelectedPoint(),
      ),
      undo: button("Undo", "Undo the last change to this drawing", () => this.undo()),
      clear: button("Clear", "Delete every track", () => this.clear()),
    };
    const b = this.buttons;
    const bar = element("div", { className: "ea-traj-bar" }, [b.add, b.remove, this.chips, b.point, b.undo, b.clear]);
    this.canvas = element("canvas", { tabIndex: 0 });
    this.holder = element("div", { className: "ea-traj-holder" }, [this.canvas]);
    this.status = element("div", { className: "ea-traj-status" });
    this.root = element("div", { className: "ea-traj" }, [bar, this.holder, this.status]);

    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    c.addEventListener("pointermove", (e) => this.onPointerMove(e));
    c.addEventListener("pointerup", (e) => this.onPointerUp(e));
    c.addEventListener("pointercancel", (e) => this.onPointerUp(e));
    c.addEventListener("contextmenu", (e) => e.preventDefault());
    c.addEventListener("pointerleave", () => this.setHover(null));
    c.addEventListener("keydown", (e) => this.onKeyDown(e));
    c.addEventListener("wheel", (e) => app.canvas?.processMouseWheel?.(e)); // zoom the graph, as over a node
    this.root.addEventListener("dragover", (e) => {
      if ([...(e.dataTransfer?.items ?? [])].some((i) => i.kind === "file")) {
        e.preventDefault();
        e.stopPropagation();
      }
    });
    this.root.addEventListener("drop", (e) => this.onDrop(e));
    c.addEventListener("paste", (e) => this.onPaste(e));
    new ResizeObserver(() => this.render()).observe(this.holder);
  }

  // -- State in the text widget -----------------------------------------------------------------------------

  /** Re-read the drawing when the text widget changed from outside (workflow load, paste, undo of the app). */
  sync() {
    const text = String(this.textWidget.value ?? "");
    if (text === this.text) return;
    this.text = text;
    this.history = [];
    this.selected = null;
    try {
      const drawing = parseDrawing(text);
      this.tracks = drawing.tracks;
      this.canvasSize = drawing.canvas;
      this.problem = "";
    } catch (error) {
      this.tracks = [];
      this.canvasSize = null;
      this.problem = `The trajectory text is ${error.message}; drawing replaces it.`;
    }
    this.active = Math.max(0, this.tracks.length - 1);
    this.render();
  }

  /** Write the drawing to the text widget: the only state that is saved and sent to the server. */
  commit() {
    const rect = this.frameRect();
    if (rect.width >= 1 && rect.height >= 1) {
      this.canvasSize = { width: Math.round(rect.width), height: Math.round(rect.height) };
    } else if (!this.canvasSize) {
      this.canvasSize = { width: this.outputSize()[0], height: this.outputSize()[1] };
    }
    this.text = serializeDrawing({ tracks: this.tracks, canvas: this.canvasSize, frames: this.frames() });
    this.textWidget.value = this.text;
    this.problem = "";
    this.node.setDirtyCanvas?.(true, false);
    this.render();
  }

  snapshot() {
    return { tracks: this.tracks.map((t) => t.map(([x, y]) => [x, y])), active: this.active };
  }

  pushUndo(state = this.snapshot()) {
    this.history.push(state);
    if (this.history.length > UNDO_LIMIT) this.history.shift();
  }

  // -- Reading the node's other widgets ---------------------------------------------------------------------

  widgetValue(name, fallback) {
    const value = Number(this.node.widgets?.find((w) => w.name === name)?.value);
    return Number.isFinite(value) && value > 0 ? value : fallback;
  }

  frames() {
    return Math.max(1, Math.round(this.widgetValue("frames", 49)));
  }

  /** How the sampler fits the reference image (the node's resize_mode, which should match the sampler's). */
  resizeMode() {
    const value = this.node.widgets?.find((w) => w.name === "resize_mode")?.value;
    return RESIZE_MODES.includes(value) ? value : RESIZE_MODES[0];
  }

  outputSize() {
    return [Math.round(this.widgetValue("width", 672)), Math.round(this.widgetValue("height", 384))];
  }

  /** Width / height used to measure arc length: the stored canvas (what the server will use), else the frame's. */
  aspect() {
    if (this.canvasSize) return this.canvasSize.width / this.canvasSize.height;
    const [w, h] = this.outputSize();
    return w / h;
  }

  /** The video frame inside the canvas, in CSS pixels of the canvas: the output's aspect, centred. */
  frameRect() {
    const cw = this.holder.clientWidth;
    const ch = this.holder.clientHeight;
    const [w, h] = this.outputSize();
    const ratio = w / h;
    const width = Math.max(0, Math.min(cw - 2 * FRAME_PAD, (ch - 2 * FRAME_PAD) * ratio));
    const height = width / ratio;
    return { x: (cw - width) / 2, y: (ch - height) / 2, width, height };
  }

  // -- Changes ------------------------------------------------------------------------------------------------

  /** Called when the user changes width, height or frames: the stored canvas and frame count follow. */
  onSizeOrFramesChanged() {
    this.sync();
    if (this.tracks.some((t) => t.length)) this.commit();
    else this.render();
  }

  addTrack() {
    if (this.tracks.length && !this.tracks[this.tracks.length - 1].length) {
      this.active = this.tracks.length - 1;
    } else {
      this.pushUndo();
      this.tracks.push([]);
      this.active = this.tracks.length - 1;
    }
    this.selected = null;
    this.commit();
  }

  deleteTrack() {
    if (!this.tracks.length) return;
    this.pushUndo();
    this.tracks.splice(this.active, 1);
    this.active = Math.max(0, Math.min(this.active, this.tracks.length - 1));
    this.selected = null;
    this.commit();
  }

  selectTrack(index) {
    this.active = index;
    this.selected = null;
    this.render();
  }

  deletePoint(track, point) {
    this.pushUndo();
    this.tracks[track].splice(point, 1);
    if (!this.tracks[track].length) {
      this.tracks.splice(track, 1);
      this.active = Math.max(0, Math.min(track, this.tracks.length - 1));
    } else {
      this.active = track;
    }
    this.selected = null;
    this.commit();
  }

  deleteSelectedPoint() {
    if (this.selected) this.deletePoint(this.selected.track, this.selected.point);
  }

  undo() {
    const state = this.history.pop();
    if (!state) return;
    this.tracks = state.tracks;
    this.active = Math.min(state.active, Math.max(0, this.tracks.length - 1));
    this.selected = null;
    this.commit();
  }

  clear() {
    if (!this.tracks.length) return;
    this.pushUndo();
    this.tracks = [];
    this.active = 0;
    this.selected = null;
    this.commit();
  }

  // -- Image ------------------------------------------------------------------------------------------------

  imageKey() {
    const graph = this.node.graph;
    const id = this.node.id;
    return graph && id != null && id !== -1 ? `${graph.id ?? ""}:${id}` : null;
  }

  /** Show the image this node showed before its graph was rebuilt (undo, redo, switching workflow tabs) or the
   * page was reloaded (a run's preview only). */
  restoreImage() {
    const key = this.imageKey();
    if (this.image || !key || this.restoredFrom === key) return;
    this.restoredFrom = key;
    const url = shownImages.get(key) ?? storedImages()[key];
    if (url) this.setImage(url);
  }

  setImage(url, revoke = false) {
    const img = new Image();
    img.onload = () => {
      const key = this.imageKey();
      const previous = key ? shownImages.get(key) : this.imageUrl;
      if (previous?.startsWith("blob:") && previous !== url) URL.revokeObjectURL(previous);
      if (key) {
        shownImages.set(key, url);
        storeImage(key, url);
      }
      this.image = img;
      this.imageUrl = url;
      this.render();
    };
    img.onerror = () => {
      if (revoke) URL.revokeObjectURL(url);
      this.problem = "The image could not be loaded.";
      this.render();
    };
    img.src = url;
  }

  /** The node ran: show the image its `image` input received (saved by the server as a temp preview). */
  onExecuted(output) {
    const ref = output?.[UI_IMAGE_KEY]?.[0];
    if (!ref?.filename) return;
    const params = new URLSearchParams({ filename: ref.filename, type: ref.type ?? "temp", subfolder: ref.subfolder ?? "" });
    this.setImage(api.apiURL(`/view?${params}&rand=${Math.random()}`));
  }

  imageFile(files) {
    return [...(files ?? [])].find((f) => f.type?.startsWith("image/"));
  }

  onDrop(e) {
    const file = this.imageFile(e.dataTransfer?.files);
    if (!file) return;
    e.preventDefault();
    e.stopPropagation();
    this.setImage(URL.createObjectURL(file), true);
  }

  onPaste(e) {
    const file = this.imageFile([...(e.clipboardData?.items ?? [])].filter((i) => i.kind === "file").map((i) => i.getAsFile()));
    if (!file) return;
    e.preventDefault();
    e.stopPropagation();
    this.setImage(URL.createObjectURL(file), true);
  }

  // -- Pointer ----------------------------------------------------------------------------------------------

  /** Event -> canvas CSS pixels (the element may be scaled by the graph's zoom). */
  localPoint(e) {
    const r = this.canvas.getBoundingClientRect();
    const sx = r.width ? this.canvas.clientWidth / r.width : 1;
    const sy = r.height ? this.canvas.clientHeight / r.height : 1;
    return [(e.clientX - r.left) * sx, (e.clientY - r.top) * sy];
  }

  toPixels([x, y], rect = this.frameRect()) {
    return [rect.x + x * rect.width, rect.y + y * rect.height];
  }

  toNormalised([px, py], rect = this.frameRect()) {
    return [quantize((px - rect.x) / rect.width), quantize((py - rect.y) / rect.height)];
  }

  /** The point under `p` (canvas pixels): the active track first, then the others. */
  hitPoint(p) {
    const rect = this.frameRect();
    const order = [this.active, ...this.tracks.map((_, i) => i).filter((i) => i !== this.active)];
    for (const t of order) {
      const track = this.tracks[t] ?? [];
      for (let i = track.length - 1; i >= 0; i--) {
        const [x, y] = this.toPixels(track[i], rect);
        if (Math.hypot(x - p[0], y - p[1]) <= HIT_RADIUS) return { track: t, point: i };
      }
    }
    return null;
  }

  /** Index at which a click at `p` inserts into the active track: inside a segment it is near, else the end. */
  insertIndex(p) {
    const track = this.tracks[this.active] ?? [];
    const n = track.length;
    if (n < 2) return n;
    const rect = this.frameRect();
    const poly = splinePolyline(track).map((q) => this.toPixels(q, rect));
    let best = { d: Infinity, k: 0 };
    for (let k = 0; k + 1 < poly.length; k++) {
      const d = distanceToSegment(p, poly[k], poly[k + 1]);
      if (d < best.d) best = { d, k };
    }
    if (best.d > CURVE_HIT) return n;
    const segment = n === 2 ? 0 : Math.min(Math.floor(best.k / SAMPLES_PER_SEGMENT), n - 2);
    return segment + 1;
  }

  forwardToGraph(e, handler) {
    // Middle-button panning over the widget, as ComfyUI's own text areas do.
    app.canvas?.[handler]?.(e);
  }

  onPointerDown(e) {
    if (e.button === 1) return this.forwardToGraph(e, "processMouseDown");
    this.sync();
    // No preventDefault: the mouseup that follows is how ComfyUI's change tracker records the edit for its undo.
    e.stopPropagation();
    this.canvas.focus({ preventScroll: true });
    const p = this.localPoint(e);
    const hit = this.hitPoint(p);
    if (e.button === 2 || (e.button === 0 && e.altKey)) {
      if (hit) this.deletePoint(hit.track, hit.point);
      return;
    }
    if (e.button !== 0) return;
    const rect = this.frameRect();
    if (rect.width < 1 || rect.height < 1) return;
    if (hit) {
      this.active = hit.track;
      this.selected = hit;
      this.drag = { ...hit, before: this.snapshot(), moved: false };
    } else {
      this.pushUndo();
      if (!this.tracks.length) this.tracks.push([]);
      this.active = Math.min(this.active, this.tracks.length - 1);
      const index = this.insertIndex(p);
      this.tracks[this.active].splice(index, 0, this.toNormalised(p, rect));
      this.selected = { track: this.active, point: index };
      this.drag = { ...this.selected, before: null, moved: true };
      this.commit();
    }
    this.canvas.setPointerCapture?.(e.pointerId);
    this.render();
  }

  onPointerMove(e) {
    if (e.buttons & 4) return this.forwardToGraph(e, "processMouseMove");
    const p = this.localPoint(e);
    if (!this.drag) return this.setHover(this.hitPoint(p));
    e.preventDefault();
    e.stopPropagation();
    const { track, point } = this.drag;
    if (!this.drag.moved) {
      this.pushUndo(this.drag.before);
      this.drag.moved = true;
    }
    this.tracks[track][point] = this.toNormalised(p);
    this.commit();
  }

  onPointerUp(e) {
    if (e.button === 1) return this.forwardToGraph(e, "processMouseUp");
    if (!this.drag) return;
    this.drag = null;
    this.canvas.releasePointerCapture?.(e.pointerId);
    this.render();
  }

  setHover(hit) {
    const key = hit ? `${hit.track}:${hit.point}` : "";
    if (key === (this.hover ?? "")) return;
    this.hover = key || null;
    this.canvas.style.cursor = hit ? "move" : "crosshair";
    this.render();
  }

  onKeyDown(e) {
    // Delete and Backspace never reach the graph from here: there they would delete the whole node. Ctrl+Z is
    // left to ComfyUI's undo, which covers the drawing since it lives in the workflow.
    if (e.key !== "Delete" && e.key !== "Backspace") return;
    this.deleteSelectedPoint();
    e.preventDefault();
    e.stopPropagation();
  }

  // -- Drawing ------------------------------------------------------------------------------------------------

  /** Called by the front end on every redraw of the graph: repaint only when something we show changed. */
  onGraphDraw() {
    this.sync();
    this.restoreImage();
    if (this.viewKey() !== this.renderKey) this.render();
  }

  /** Device pixels per CSS pixel of the canvas: the screen's ratio times the graph's zoom (sharp when zoomed in). */
  pixelRatio() {
    const zoom = Number(app.canvas?.ds?.scale) || 1;
    return (window.devicePixelRatio || 1) * Math.min(Math.max(zoom, 1), 3);
  }

  viewKey() {
    return [this.frames(), ...this.outputSize(), this.holder.clientWidth, this.holder.clientHeight, this.pixelRatio()].join("|");
  }

  render() {
    this.renderKey = this.viewKey();
    this.updateControls();
    const dpr = this.pixelRatio();
    const cw = this.holder.clientWidth;
    const ch = this.holder.clientHeight;
    if (!cw || !ch) return;
    const c = this.canvas;
    if (c.width !== Math.round(cw * dpr) || c.height !== Math.round(ch * dpr)) {
      c.width = Math.round(cw * dpr);
      c.height = Math.round(ch * dpr);
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cw, ch);
    ctx.fillStyle = "#151515";
    ctx.fillRect(0, 0, cw, ch);
    const rect = this.frameRect();
    if (rect.width < 1 || rect.height < 1) return;
    this.drawBackground(ctx, rect);
    const frames = this.frames();
    const aspect = this.aspect();
    this.tracks.forEach((track, t) => t !== this.active && this.drawTrack(ctx, rect, track, t, frames, aspect));
    if (this.tracks[this.active]) this.drawTrack(ctx, rect, this.tracks[this.active], this.active, frames, aspect);
  }

  drawBackground(ctx, rect) {
    if (this.image) {
      // Fitted as the sampler fits the reference image to width x height, so a track lands on what it was drawn on.
      ctx.fillStyle = "#000";
      ctx.fillRect(rect.x, rect.y, rect.width, rect.height);
      ctx.drawImage(this.image, ...fitImage(this.image.naturalWidth, this.image.naturalHeight, rect, this.resizeMode()));
      ctx.fillStyle = "rgba(0, 0, 0, 0.25)";
      ctx.fillRect(rect.x, rect.y, rect.width, rect.height);
    } else {
      ctx.fillStyle = "#262626";
      ctx.fillRect(rect.x, rect.y, rect.width, rect.height);
      ctx.strokeStyle = "#333";
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (const f of [1 / 3, 2 / 3]) {
        ctx.moveTo(rect.x + f * rect.width, rect.y);
        ctx.lineTo(rect.x + f * rect.width, rect.y + rect.height);
        ctx.moveTo(rect.x, rect.y + f * rect.height);
        ctx.lineTo(rect.x + rect.width, rect.y + rect.height * f);
      }
      ctx.stroke();
      ctx.fillStyle = "#777";
      ctx.font = "12px sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("Queue to show the image input here, or drop / paste an image.", rect.x + rect.width / 2, rect.y + 20, rect.width - 16);
      ctx.textAlign = "start";
    }
    ctx.strokeStyle = "#888";
    ctx.lineWidth = 1;
    ctx.strokeRect(rect.x + 0.5, rect.y + 0.5, rect.width - 1, rect.height - 1);
  }

  drawTrack(ctx, rect, track, t, frames, aspect) {
    if (!track.length) return;
    const color = COLORS[t % COLORS.length];
    const active = t === this.active;
    ctx.globalAlpha = active ? 1 : 0.65;
    const curve = splinePolyline(track).map((q) => this.toPixels(q, rect));
    if (curve.length > 1) {
      ctx.strokeStyle = "rgba(0, 0, 0, 0.6)";
      ctx.lineWidth = active ? 5 : 4;
      ctx.lineJoin = "round";
      const path = () => {
        ctx.beginPath();
        curve.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      };
      path();
      ctx.stroke();
      ctx.strokeStyle = color;
      ctx.lineWidth = active ? 2.5 : 2;
      path();
      ctx.stroke();
      this.drawArrow(ctx, curve, color);
    }
    this.drawFrames(ctx, rect, track, color, frames, aspect);
    track.forEach((q, i) => {
      const [x, y] = this.toPixels(q, rect);
      const selected = this.selected?.track === t && this.selected.point === i;
      const hovered = this.hover === `${t}:${i}`;
      ctx.beginPath();
      ctx.arc(x, y, selected || hovered ? POINT_RADIUS + 2 : POINT_RADIUS, 0, 2 * Math.PI);
      ctx.fillStyle = selected ? "#fff" : color;
      ctx.fill();
      ctx.lineWidth = 2;
      ctx.strokeStyle = selected ? color : "#000";
      ctx.stroke();
    });
    const [x0, y0] = this.toPixels(track[0], rect);
    ctx.font = "bold 13px sans-serif";
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#000";
    ctx.strokeText(String(t + 1), x0 - 16, y0 - 9);
    ctx.fillStyle = color;
    ctx.fillText(String(t + 1), x0 - 16, y0 - 9);
    ctx.globalAlpha = 1;
  }

  drawArrow(ctx, curve, color) {
    const [x1, y1] = curve[curve.length - 1];
    let k = curve.length - 2;
    while (k > 0 && Math.hypot(x1 - curve[k][0], y1 - curve[k][1]) < 12) k--;
    const angle = Math.atan2(y1 - curve[k][1], x1 - curve[k][0]);
    ctx.beginPath();
    ctx.moveTo(x1 + 12 * Math.cos(angle), y1 + 12 * Math.sin(angle));
    ctx.lineTo(x1 + 4 * Math.cos(angle + 2.3), y1 + 4 * Math.sin(angle + 2.3));
    ctx.lineTo(x1 + 4 * Math.cos(angle - 2.3), y1 + 4 * Math.sin(angle - 2.3));
    ctx.closePath();
    ctx.fillStyle = color;
    ctx.fill();
  }

  /** One dot per frame where the object will be, with frame numbers (0-based) on the first, last and every few. */
  drawFrames(ctx, rect, track, color, frames, aspect) {
    const samples = resampleTrack(track, frames, aspect).map((q) => this.toPixels(q, rect));
    const pathLength = samples.reduce((sum, q, i) => (i ? sum + Math.hypot(q[0] - samples[i - 1][0], q[1] - samples[i - 1][1]) : 0), 0);
    ctx.font = "10px sans-serif";
    if (pathLength < 1) {
      const [x, y] = samples[0];
      this.label(ctx, frames > 1 ? `0–${frames - 1}` : "0", x + 8, y + 16, color);
      return;
    }
    const step = labelStep(pathLength / Math.max(1, frames - 1));
    samples.forEach(([x, y], j) => {
      ctx.beginPath();
      ctx.arc(x, y, 2.5, 0, 2 * Math.PI);
      ctx.fillStyle = "#000";
      ctx.fill();
      ctx.beginPath();
      ctx.arc(x, y, 1.6, 0, 2 * Math.PI);
      ctx.fillStyle = "#fff";
      ctx.fill();
      const last = j === frames - 1;
      const labelled = j === 0 || last || (j % step === 0 && frames - 1 - j >= step / 2);
      if (labelled) this.label(ctx, String(j), x + 5, y + 13, color);
    });
  }

  label(ctx, text, x, y, color) {
    ctx.lineWidth = 3;
    ctx.strokeStyle = "rgba(0, 0, 0, 0.85)";
    ctx.strokeText(text, x, y);
    ctx.fillStyle = color;
    ctx.fillText(text, x, y);
  }

  updateControls() {
    const b = this.buttons;
    const track = this.tracks[this.active];
    b.remove.disabled = !this.tracks.length;
    b.point.disabled = !this.selected;
    b.undo.disabled = !this.history.length;
    b.clear.disabled = !this.tracks.length;
    const chipsKey = `${this.tracks.length}|${this.active}`;
    if (this.chips.dataset.key !== chipsKey) {
      this.chips.dataset.key = chipsKey;
      this.chips.replaceChildren(
        ...this.tracks.map((_, i) => {
          const chip = element("button", { type: "button", textContent: String(i + 1), title: `Select track ${i + 1}` });
          chip.style.color = COLORS[i % COLORS.length];
          if (i === this.active) chip.classList.add("active");
          chip.addEventListener("click", (e) => {
            e.stopPropagation();
            this.selectTrack(i);
            this.canvas.focus({ preventScroll: true });
          });
          return chip;
        }),
      );
    }
    const frames = this.frames();
    const summary = track
      ? `Track ${this.active + 1} of ${this.tracks.length}: ${track.length} point${track.length === 1 ? "" : "s"}, ${frames} frames.`
      : `No track yet, ${frames} frames.`;
    const help = "Click: add point · drag: move · right-click / Alt-click: delete · drop or paste an image.";
    this.status.textContent = this.problem ? `${this.problem} ${help}` : `${summary} ${help}`;
    this.status.title = this.status.textContent;
  }
}

// ------------------------------------------------------------------------------------------------------------
// Registration

function chain(object, name, after) {
  const before = object[name];
  object[name] = function (...args) {
    const result = before?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

function attachEditor(node) {
  const textWidget = node.widgets?.find((w) => w.name === "trajectory");
  if (!textWidget) return;
  // The JSON stays in the workflow and the prompt, but out of sight: the canvas edits it.
  textWidget.hidden = true;
  textWidget.options = textWidget.options ?? {};
  textWidget.options.getMinHeight = () => 0;
  textWidget.options.getMaxHeight = () => 0;

  const editor = new TrajectoryEditor(node, textWidget);
  const widget = node.addDOMWidget("trajectory_canvas", "easyanimate_trajectory", editor.root, {
    serialize: false,
    hideOnZoom: true,
    getValue: () => textWidget.value,
    setValue: () => {},
    getMinHeight: () => MIN_HEIGHT,
    onDraw: () => editor.onGraphDraw(),
    afterResize: () => editor.render(),
  });
  widget.serialize = false; // not in widgets_values: the canvas has no state of its own
  widget.editor = editor;
  for (const name of ["width", "height", "frames"]) {
    const w = node.widgets.find((x) => x.name === name);
    if (w) chain(w, "callback", () => editor.onSizeOrFramesChanged());
  }
  const resize = node.widgets.find((x) => x.name === "resize_mode");
  if (resize) chain(resize, "callback", () => editor.render());
  node.setSize?.([Math.max(node.size?.[0] ?? 0, DEFAULT_NODE_SIZE[0]), Math.max(node.size?.[1] ?? 0, DEFAULT_NODE_SIZE[1])]);
  return editor;
}

app.registerExtension({
  name: "EasyAnimate.TrajectoryWidget",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      attachEditor(this);
    });
    chain(nodeType.prototype, "onConfigure", function () {
      const editor = this.widgets?.find((w) => w.name === "trajectory_canvas")?.editor;
      editor?.sync();
      editor?.restoreImage();
    });
    chain(nodeType.prototype, "onExecuted", function (output) {
      this.widgets?.find((w) => w.name === "trajectory_canvas")?.editor?.onExecuted(output);
    });
  },
});
