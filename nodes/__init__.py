"""The pack's ComfyUI nodes (V1 API). Node ids start with ``EasyAnimate`` and never change once released.

Node modules import ``easyanimate_core`` (and so torch) inside their functions, never at import time, so the pack
imports cheaply; ``_comfy`` is the only module that touches ComfyUI.
"""

from . import (_comfy, camera, conditioning, loader, lora, sampler, scheduler, size, teacache, text, torch_compile,
               training, trajectory, vae)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in (loader, text, sampler, conditioning, size, scheduler, teacache, torch_compile, vae, lora, camera,
                trajectory, training):
    NODE_CLASS_MAPPINGS.update(_module.NODES)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.DISPLAY)

_comfy.register_model_folder()
