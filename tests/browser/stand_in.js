// The smallest stand-in for the ComfyUI front end that web/js/trajectory_widget.js needs: the extension
// registry (scripts/app.js), api.apiURL (scripts/api.js), and nodes with widgets and addDOMWidget. The tests
// drive it through window.T.
import { app } from "/scripts/app.js";

const widgetModule = "/extensions/ComfyUI-EasyAnimate/js/trajectory_widget.js";
const EMPTY = '{"version": 1, "tracks": []}';

class NodeType {}
NodeType.prototype.onNodeCreated = function () {
  this.createdBy = "node type"; // an existing handler the extension must keep calling
};

const nodes = [];
const documentKeys = [];
document.addEventListener("keydown", (e) => documentKeys.push(e.key));

function makeWidget(name, type, value) {
  return { name, type, value, options: {}, callback: undefined };
}

async function boot() {
  const module = await import(widgetModule);
  for (const extension of app.extensions) await extension.beforeRegisterNodeDef?.(NodeType, { name: "EasyAnimateTrajectory" }, app);
  await app.extensions[0].beforeRegisterNodeDef?.(class Other {}, { name: "SomethingElse" }, app);
  window.T = {
    module,
    app,
    nodes,
    documentKeys,
    /** A node as ComfyUI creates it: its widgets from the node definition, then onNodeCreated. */
    createNode({ width = 672, height = 384, frames = 49, resize = "crop", text = EMPTY, box = [560, 420], graph = null, id = -1 } = {}) {
      const host = document.createElement("div");
      host.className = "host dom-widget";
      host.style.width = `${box[0]}px`;
      host.style.height = `${box[1]}px`;
      document.getElementById("hosts").append(host);
      const node = Object.create(NodeType.prototype);
      Object.assign(node, {
        id,
        graph,
        size: [300, 200],
        host,
        widgets: [
          makeWidget("trajectory", "customtext", text),
          makeWidget("width", "number", width),
          makeWidget("height", "number", height),
          makeWidget("frames", "number", frames),
          makeWidget("resize_mode", "combo", resize),
        ],
        addDOMWidget(name, type, element, options) {
          const widget = {
            name,
            type,
            element,
            options,
            get value() {
              return options.getValue?.();
            },
            set value(v) {
              options.setValue?.(v);
            },
          };
          this.widgets.push(widget);
          host.append(element);
          return widget;
        },
        setSize(size) {
          this.size = [...size];
        },
        setDirtyCanvas() {},
      });
      node.onNodeCreated();
      nodes.push(node);
      return nodes.length - 1;
    },
    node: (i) => nodes[i],
    editor: (i) => nodes[i].widgets.find((w) => w.name === "trajectory_canvas").editor,
    text: (i) => nodes[i].widgets.find((w) => w.name === "trajectory").value,
    /** Load a workflow's value into the node, as LGraphNode.configure does: set widget values, then onConfigure. */
    configure(i, text) {
      nodes[i].widgets.find((w) => w.name === "trajectory").value = text;
      nodes[i].onConfigure?.({});
    },
    /** A user edit of a number or combo widget: LiteGraph sets the value, then calls the widget's callback. */
    setNumber(i, name, value) {
      const w = nodes[i].widgets.find((x) => x.name === name);
      w.value = value;
      w.callback?.(value);
    },
    resize(i, box) {
      nodes[i].host.style.width = `${box[0]}px`;
      nodes[i].host.style.height = `${box[1]}px`;
    },
    /** Normalised frame coordinates -> page coordinates for page.mouse. */
    toPage(i, x, y) {
      const editor = window.T.editor(i);
      const r = editor.canvas.getBoundingClientRect();
      const f = editor.frameRect();
      const sx = r.width / editor.canvas.clientWidth;
      const sy = r.height / editor.canvas.clientHeight;
      return [r.left + (f.x + x * f.width) * sx, r.top + (f.y + y * f.height) * sy];
    },
    state(i) {
      const editor = window.T.editor(i);
      const f = editor.frameRect();
      return {
        text: window.T.text(i),
        tracks: editor.tracks,
        active: editor.active,
        selected: editor.selected,
        frame: [f.width, f.height],
        canvasPixels: [editor.canvas.width, editor.canvas.height],
        image: editor.image ? [editor.image.naturalWidth, editor.image.naturalHeight] : null,
        imageUrl: editor.imageUrl,
        status: editor.status.textContent,
        undoDisabled: editor.buttons.undo.disabled,
        chips: [...editor.chips.children].map((c) => c.textContent),
      };
    },
    button(i, label) {
      const editor = window.T.editor(i);
      const all = [...editor.root.querySelectorAll("button")];
      const b = all.find((x) => x.textContent === label);
      const r = b.getBoundingClientRect();
      return [r.left + r.width / 2, r.top + r.height / 2];
    },
    /** [r, g, b] of the canvas at normalised frame coordinates. */
    framePixel(i, x, y) {
      const editor = window.T.editor(i);
      const f = editor.frameRect();
      const dpr = editor.canvas.width / editor.canvas.clientWidth;
      const px = Math.floor((f.x + x * f.width) * dpr);
      const py = Math.floor((f.y + y * f.height) * dpr);
      return [...editor.canvas.getContext("2d").getImageData(px, py, 1, 1).data.slice(0, 3)];
    },
    pixels(i) {
      return window.T.editor(i).canvas.toDataURL("image/png");
    },
  };
  document.body.dataset.ready = "1";
}

boot().catch((error) => {
  document.body.dataset.error = String(error?.stack ?? error);
});
