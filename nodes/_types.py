"""The ComfyUI type names our nodes pass to each other.

The transformer travels as ComfyUI's own ``MODEL`` (a ModelPatcher, ``_native.py``) and prompts as ComfyUI's own
``CONDITIONING``, so core nodes take them; the text encoder and the VAE are ModelPatchers under names of our own,
since ComfyUI's CLIP and VAE nodes expect other architectures.
"""

MODEL = "MODEL"
TEXT_ENCODER = "EASYANIMATE_TEXT_ENCODER"
VAE = "EASYANIMATE_VAE"
CONDITIONING = "CONDITIONING"
CAMERA = "EASYANIMATE_CAMERA"
TRAJECTORY = "EASYANIMATE_TRAJECTORY"
CATEGORY = "EasyAnimate"

# The optional inputs that choose the generation mode, shared by EasyAnimate Sampler and EasyAnimate Conditioning.
MODE_INPUTS = {
    "start_image": ("IMAGE", "Image-to-video (InP models): the first frame(s)."),
    "end_image": ("IMAGE", "Image-to-video (InP models): the last frame(s)."),
    "input_video": ("IMAGE", "Video-to-video: the frames to transform (see denoise_strength)."),
    "control_video": ("IMAGE", "Control models: a canny, pose, depth or any control video."),
    "reference_image": ("IMAGE", "Control, trajectory and camera modes: the reference image (first frame)."),
    "trajectory": (TRAJECTORY, "Trajectory control (Control models): from EasyAnimate Trajectory."),
    "camera": (CAMERA, "Camera control (Control-Camera models): from the EasyAnimate Camera nodes."),
}


def mode_input_types() -> dict:
    return {name: (kind, {"tooltip": tip}) for name, (kind, tip) in MODE_INPUTS.items()}


RESIZE_TOOLTIP = ("How images and videos of another aspect ratio than width x height fit: crop = scale to cover and "
                  "keep the centre (as the models were trained); pad = scale to fit and add black borders; stretch = "
                  "resize as is (distorts). EasyAnimate Size From Image picks a trained size with the image's "
                  "aspect ratio.")


def resize_input_types(tooltip: str = RESIZE_TOOLTIP) -> dict:
    """The resize mode of the image and video inputs; optional and last, so saved workflows keep their widget order."""
    from ..easyanimate_core.resize import DEFAULT_RESIZE, RESIZE_MODES

    return {"resize_mode": (list(RESIZE_MODES), {"default": DEFAULT_RESIZE, "tooltip": tooltip})}


def size_input_types() -> dict:
    """width, height and frames, as the sampler and the conditioning node declare them."""
    return {
        "width": ("INT", {"default": 672, "min": 16, "max": 2048, "step": 16,
                          "tooltip": "Video width in pixels, a multiple of 16."}),
        "height": ("INT", {"default": 384, "min": 16, "max": 2048, "step": 16,
                           "tooltip": "Video height in pixels, a multiple of 16."}),
        "frames": ("INT", {"default": 49, "min": 1, "max": 161, "step": 4,
                           "tooltip": "Number of frames, 4k+1 (the models were trained on up to 49)."}),
    }


SEED_INPUT = ("INT", {"default": 43, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                      "tooltip": "Noise seed; the same seed gives the same video on every device."})


def teacache_input_types(default_threshold: float) -> dict:
    """TeaCache's options, as the sampler and the model patch declare them."""
    return {
        "teacache_threshold": ("FLOAT", {"default": default_threshold, "min": 0.0, "max": 1.0, "step": 0.01,
                                         "tooltip": "TeaCache: 0 = off (every step computed, exact). 0.1 is the "
                                                    "official default; higher skips more steps and is less "
                                                    "faithful. The log says which steps were reused."}),
        "teacache_start_steps": ("INT", {"default": 1, "min": 0, "max": 200,
                                         "tooltip": "TeaCache: the first steps, always computed."}),
        "teacache_end_steps": ("INT", {"default": 1, "min": 0, "max": 200,
                                       "tooltip": "TeaCache: the last steps, always computed."}),
    }
