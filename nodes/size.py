"""EasyAnimate Size From Image: an image's aspect ratio -> the nearest width and height the models were trained on."""

from __future__ import annotations

from ._types import CATEGORY


class EasyAnimateSizeFromImage:
    DESCRIPTION = ("Picks the output size from an image: the size of the official training buckets nearest to the "
                   "image's aspect ratio at a base resolution (512: 672x384 for 16:9, 768: 1008x576, 1024: "
                   "1344x768), multiples of 16. Connect width and height to the sampler or conditioning node so a "
                   "start image or video is neither cropped much nor padded.")
    CATEGORY = CATEGORY
    FUNCTION = "size"
    RETURN_TYPES = ("INT", "INT")
    RETURN_NAMES = ("width", "height")
    OUTPUT_TOOLTIPS = ("Output width in pixels, a multiple of 16.", "Output height in pixels, a multiple of 16.")

    @classmethod
    def INPUT_TYPES(cls):
        from ..easyanimate_core.resize import BASE_RESOLUTIONS

        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The start image, reference image or a video's frames; only its "
                                               "width and height are read."}),
                "base_resolution": ([str(base) for base in BASE_RESOLUTIONS], {"default": "512", "tooltip": (
                    "The training resolution to match: about base x base pixels in all (as the official "
                    "base_resolution). 512 is the fastest and needs the least memory; 768, 960 and 1024 are sharper "
                    "and need far more.")}),
            }
        }

    def size(self, image, base_resolution):
        from ..easyanimate_core.resize import bucket_size

        if image.ndim != 4:
            raise ValueError(f"image has shape {tuple(image.shape)}: expected an IMAGE [F, H, W, C].")
        return bucket_size(int(image.shape[2]), int(image.shape[1]), int(base_resolution))


NODES = {"EasyAnimateSizeFromImage": EasyAnimateSizeFromImage}
DISPLAY = {"EasyAnimateSizeFromImage": "EasyAnimate Size From Image"}
