// Stand-in for ComfyUI's /scripts/app.js: only what web/js/trajectory_widget.js touches.
export const app = {
  extensions: [],
  canvas: null,
  registerExtension(extension) {
    this.extensions.push(extension);
  },
};
