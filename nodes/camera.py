"""Camera nodes: presets, simultaneous combination, one-after-another join, pose files -> camera path."""

from __future__ import annotations

from . import _comfy
from ._types import CAMERA, CATEGORY

_FRAMES = ("INT", {"default": 49, "min": 1, "max": 161, "tooltip": "Poses in the path; match the sampler's frames."})


def _camera_input(tip: str):
    return (CAMERA, {"tooltip": tip})


class EasyAnimateCameraPreset:
    DESCRIPTION = ("A camera motion from camera_presets/presets.json (CameraCtrl convention, as the "
                   "Control-Camera models were trained; see camera_presets/README.md for the axes).")
    CATEGORY = f"{CATEGORY}/camera"
    FUNCTION = "build"
    RETURN_TYPES = (CAMERA,)
    RETURN_NAMES = ("camera",)
    OUTPUT_TOOLTIPS = ("A camera path for the sampler, EasyAnimate Camera Combine or Join.",)

    @classmethod
    def INPUT_TYPES(cls):
        from ..easyanimate_core.camera import V51_WORKFLOW_INTRINSICS, preset_names

        fx, fy = V51_WORKFLOW_INTRINSICS[:2]  # the intrinsics of the official V5.1 camera workflow
        return {
            "required": {
                "preset": (preset_names(), {"default": "Pan Left", "tooltip": "The motion. Pan/Zoom/ACW/CW are the "
                                                                               "official presets; Orbit, Tilt and "
                                                                               "Yaw are ours."}),
                "frames": _FRAMES,
                "speed": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05,
                                    "tooltip": "Scales the whole displacement and rotation (1 = 1.5 units / 60°)."}),
                "fx": ("FLOAT", {"default": fx, "min": 0.01, "max": 10.0, "step": 0.001,
                                 "tooltip": "Focal length / image width of the assumed 16:9 source camera."}),
                "fy": ("FLOAT", {"default": fy, "min": 0.01, "max": 10.0, "step": 0.001,
                                 "tooltip": "Focal length / image height of the assumed 16:9 source camera."}),
            }
        }

    def build(self, preset, frames, speed, fx, fy):
        from ..easyanimate_core.camera import preset_path

        return (preset_path(preset, frames, speed=speed, fx=fx, fy=fy),)


class EasyAnimateCameraCombine:
    DESCRIPTION = "Moves the camera along several paths at once (e.g. Pan Up + Pan Left = a diagonal)."
    CATEGORY = f"{CATEGORY}/camera"
    FUNCTION = "combine"
    RETURN_TYPES = (CAMERA,)
    RETURN_NAMES = ("camera",)
    OUTPUT_TOOLTIPS = ("The simultaneous motion, with the first path's intrinsics.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"camera_1": _camera_input("First motion."), "camera_2": _camera_input("Second motion.")},
            "optional": {"camera_3": _camera_input("Optional third motion."),
                         "camera_4": _camera_input("Optional fourth motion.")},
        }

    def combine(self, camera_1, camera_2, camera_3=None, camera_4=None):
        from ..easyanimate_core.camera import combine

        return (combine(*[c for c in (camera_1, camera_2, camera_3, camera_4) if c is not None]),)


class EasyAnimateCameraJoin:
    DESCRIPTION = "Plays one camera path after another; the inputs are never changed."
    CATEGORY = f"{CATEGORY}/camera"
    FUNCTION = "join"
    RETURN_TYPES = (CAMERA,)
    RETURN_NAMES = ("camera",)
    OUTPUT_TOOLTIPS = ("first then second, continuing from first's last pose.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "first": _camera_input("Plays first."),
                "second": _camera_input("Plays next, continuing from the first path's last pose."),
                "frames": ("INT", {"default": 0, "min": 0, "max": 321,
                                   "tooltip": "0 keeps both lengths (total = sum); another value resamples the "
                                              "joined path to exactly that many frames."}),
            }
        }

    def join(self, first, second, frames):
        from ..easyanimate_core.camera import join, join_to_length

        return (join(first, second) if frames == 0 else join_to_length([first, second], frames),)


class EasyAnimateCameraPoseFile:
    DESCRIPTION = "Loads a CameraCtrl / RealEstate10K pose file (a URL line, then 19 numbers per frame)."
    CATEGORY = f"{CATEGORY}/camera"
    FUNCTION = "load"
    RETURN_TYPES = (CAMERA,)
    RETURN_NAMES = ("camera",)
    OUTPUT_TOOLTIPS = ("The poses of the file as a camera path.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "path": ("STRING", {"default": "", "tooltip": (
                    "Path of the .txt pose file: relative to ComfyUI's input folder, or inside a models or output "
                    "folder.")}),
                "frames": ("INT", {"default": 49, "min": 0, "max": 1000,
                                   "tooltip": "Resample to this many poses (match the sampler); 0 keeps the file's."}),
            }
        }

    def load(self, path, frames):
        from ..easyanimate_core.camera import read_pose_file, resample

        camera = read_pose_file(_comfy.user_path(path, "path"))
        return (resample(camera, frames) if frames else camera,)


NODES = {
    "EasyAnimateCameraPreset": EasyAnimateCameraPreset,
    "EasyAnimateCameraCombine": EasyAnimateCameraCombine,
    "EasyAnimateCameraJoin": EasyAnimateCameraJoin,
    "EasyAnimateCameraPoseFile": EasyAnimateCameraPoseFile,
}
DISPLAY = {
    "EasyAnimateCameraPreset": "EasyAnimate Camera Preset",
    "EasyAnimateCameraCombine": "EasyAnimate Camera Combine",
    "EasyAnimateCameraJoin": "EasyAnimate Camera Join",
    "EasyAnimateCameraPoseFile": "EasyAnimate Camera Pose File",
}
