"""The pack's ComfyUI nodes register here.

Each node module adds its classes to ``NODE_CLASS_MAPPINGS`` (node id -> class) and its titles to
``NODE_DISPLAY_NAME_MAPPINGS`` (node id -> display name). Node ids start with ``EasyAnimate`` and never
change once released. Node modules import ``easyanimate_core`` (and so torch) inside their functions,
never at import time.
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
