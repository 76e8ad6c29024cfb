"""ComfyUI-EasyAnimate: EasyAnimate V5.1 video generation nodes for ComfyUI.

ComfyUI imports this folder as a package named after the folder and owns the top-level name ``nodes``,
so everything inside the pack is imported relatively. Importing the pack stays cheap: no torch, diffusers
or transformers here; the nodes import ``easyanimate_core`` when they run.
"""

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    # Imported as a plain module, outside any package: pytest does this with the repository root when the folder
    # name is not a Python identifier (a clone named ComfyUI-EasyAnimate). There is nothing to register then.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
