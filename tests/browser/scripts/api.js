// Stand-in for ComfyUI's /scripts/api.js: only what web/js/trajectory_widget.js touches.
export const api = {
  apiURL: (route) => `/api${route}`,
};
