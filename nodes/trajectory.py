"""Trajectory node: the drawing widget's JSON (or KJNodes-style coordinates) -> trajectory + control video."""

from __future__ import annotations

import json

from . import _comfy
from ._types import CATEGORY, TRAJECTORY, resize_input_types

EMPTY_DRAWING = '{"version": 1, "tracks": []}'


class EasyAnimateTrajectory:
    DESCRIPTION = ("Object trajectories for the Control models: draw tracks over the reference image in the "
                   "node's canvas, or connect KJNodes SplineEditor coordinates. Outputs the trajectory for the "
                   "sampler and its control video (a Gaussian blob per track) to look at.")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (TRAJECTORY, "IMAGE")
    RETURN_NAMES = ("trajectory", "control_video")
    OUTPUT_TOOLTIPS = ("Tracks for EasyAnimate Sampler's trajectory input.",
                       "The rendered control video at width x height x frames.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "trajectory": ("STRING", {"default": EMPTY_DRAWING, "multiline": True,
                                          "tooltip": "The drawing (written by the canvas widget). Also accepts "
                                                     "[{\"x\":..,\"y\":..}] pixel lists (one or several tracks)."}),
                "width": ("INT", {"default": 672, "min": 16, "max": 2048, "step": 16,
                                  "tooltip": "Width of the control video preview; match the sampler."}),
                "height": ("INT", {"default": 384, "min": 16, "max": 2048, "step": 16,
                                   "tooltip": "Height of the control video preview; match the sampler."}),
                "frames": ("INT", {"default": 49, "min": 1, "max": 161, "step": 4,
                                   "tooltip": "Frames the tracks are spread over; match the sampler."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "The reference image to draw on (shown in the canvas after a run)."}),
                "coordinates": ("STRING", {"forceInput": True,
                                           "tooltip": "KJNodes SplineEditor coord_str (or a list of them); "
                                                      "replaces the drawing when connected."}),
                "canvas_mask": ("MASK", {"tooltip": "KJNodes SplineEditor mask: its size is the canvas the "
                                                    "coordinates were drawn on (default: width x height)."}),
                **resize_input_types("How the canvas shows the image: set it as on the sampler (crop, the default, "
                                     "shows the centre the sampler keeps; pad the whole image with black borders; "
                                     "stretch the whole image squeezed), so the tracks land on what they were "
                                     "drawn on."),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def build(self, trajectory, width, height, frames, image=None, coordinates=None, canvas_mask=None,
              resize_mode=None, unique_id=None):  # resize_mode is read by the canvas widget only
        from ..easyanimate_core.trajectory import parse_trajectory, render_trajectory_video

        # The canvas widget (web/js/trajectory_widget.js) shows the image input after a run. It reads this key
        # rather than "images" so that ComfyUI does not also draw the image under the node.
        shown = _comfy.save_ui_image(image[0], "easyanimate_trajectory") if image is not None else []
        if coordinates is None and _is_empty_drawing(trajectory):
            if shown:  # the first run of a new workflow: show the image to draw on, then stop here
                _comfy.show_ui(unique_id, {"trajectory_image": shown})
            raise ValueError("The trajectory has no track: draw at least one track in the canvas (click to add "
                             "points), or connect coordinates.")
        canvas = (width, height) if canvas_mask is None else (canvas_mask.shape[-1], canvas_mask.shape[-2])
        parsed = parse_trajectory(coordinates if coordinates is not None else trajectory, canvas_size=canvas)
        result = (parsed, render_trajectory_video(parsed, frames, width, height))
        return {"ui": {"trajectory_image": shown}, "result": result} if shown else result


def _is_empty_drawing(text: str) -> bool:
    try:
        document = json.loads(text)
    except ValueError:
        return not text.strip()
    return isinstance(document, dict) and document.get("tracks") == []


NODES = {"EasyAnimateTrajectory": EasyAnimateTrajectory}
DISPLAY = {"EasyAnimateTrajectory": "EasyAnimate Trajectory"}
