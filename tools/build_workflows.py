"""Writes workflows/easyanimate_<mode>.json (ComfyUI's UI format) from the compact graphs below.

Run from the repository root: ``python tools/build_workflows.py``. Widget values are listed in the order of each
node's widget inputs; tests/test_workflows.py checks every file against the node definitions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEGATIVE = "扭曲的身体，肢体残缺，文本字幕，漫画，静止，丑陋，错误，乱码。"
MEMORY = "model_cpu_offload"


@dataclass
class Node:
    type: str
    widgets: list
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (name, type) of link inputs, in slot order
    outputs: list[tuple[str, str]] = field(default_factory=list)
    pos: tuple[int, int] = (0, 0)
    size: tuple[int, int] = (320, 160)
    title: str | None = None


def loader(model: str) -> Node:
    return Node("EasyAnimateModelLoader", [model, "bf16", MEMORY, -1, "default"],
                outputs=[("model", "MODEL"), ("text_encoder", "EASYANIMATE_TEXT_ENCODER"),
                         ("vae", "EASYANIMATE_VAE"), ("info", "STRING")], size=(360, 200))


def text_encode(prompt: str) -> Node:
    return Node("EasyAnimateTextEncode", [prompt, NEGATIVE], inputs=[("text_encoder", "EASYANIMATE_TEXT_ENCODER")],
                outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING")], size=(400, 260))


SAMPLER_OPTIONAL = [("start_image", "IMAGE"), ("end_image", "IMAGE"), ("input_video", "IMAGE"),
                    ("control_video", "IMAGE"), ("reference_image", "IMAGE"), ("trajectory", "EASYANIMATE_TRAJECTORY"),
                    ("camera", "EASYANIMATE_CAMERA")]


def sampler(strength: float = 1.0, steps: int = 50, name: str = "Flow") -> Node:
    return Node("EasyAnimateSampler",
                [672, 384, 49, steps, 6.0, 43, "fixed", strength, 0.0, 1, 1, 0.0, "crop", name],
                inputs=[("model", "MODEL"), ("vae", "EASYANIMATE_VAE"), ("positive", "CONDITIONING"),
                        ("negative", "CONDITIONING"), *SAMPLER_OPTIONAL],
                outputs=[("samples", "LATENT")], size=(340, 420))


def decode() -> Node:
    return Node("EasyAnimateDecode", [0], inputs=[("vae", "EASYANIMATE_VAE"), ("samples", "LATENT")],
                outputs=[("frames", "IMAGE")], size=(300, 100))


def create_video() -> Node:
    return Node("CreateVideo", [8], inputs=[("images", "IMAGE"), ("audio", "AUDIO")], outputs=[("VIDEO", "VIDEO")],
                size=(260, 100))


def save_video(prefix: str) -> Node:
    return Node("SaveVideo", [f"EasyAnimate/{prefix}", "auto", "auto"], inputs=[("video", "VIDEO")],
                size=(400, 420))


def load_image() -> Node:
    return Node("LoadImage", ["example.png", "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")],
                size=(300, 320))


def load_video(name: str) -> list[Node]:
    return [Node("LoadVideo", [name, "image"], outputs=[("VIDEO", "VIDEO")], size=(300, 320)),
            Node("GetVideoComponents", [], inputs=[("video", "VIDEO")],
                 outputs=[("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")], size=(260, 100))]


def note(model: str, text: str) -> Node:
    body = (f"Needs the model folder ComfyUI/models/EasyAnimate/{model}/ (original or diffusers layout). "
            f"{text}\n\nDefaults suit a 24 GB GPU: a 7B model, bf16, model_cpu_offload, 672x384x49. "
            "A 12B model (same name with 12b) needs more memory at this size.")
    return Node("Note", [body], size=(420, 180), title="Read me")


def _build(nodes: dict[str, Node], links: list[tuple[str, str, str, str]]) -> dict:
    """``links``: (from node key, output name, to node key, input name)."""
    ids = {key: i + 1 for i, key in enumerate(nodes)}
    link_rows, out_links, in_links = [], {}, {}
    for link_id, (src, out_name, dst, in_name) in enumerate(links, start=1):
        out_slot = [n for n, _ in nodes[src].outputs].index(out_name)
        in_slot = [n for n, _ in nodes[dst].inputs].index(in_name)
        kind = nodes[src].outputs[out_slot][1]
        link_rows.append([link_id, ids[src], out_slot, ids[dst], in_slot, kind])
        out_links.setdefault((src, out_slot), []).append(link_id)
        in_links[(dst, in_slot)] = link_id
    serialised = []
    for order, (key, node) in enumerate(nodes.items()):
        entry = {
            "id": ids[key], "type": node.type, "pos": list(node.pos), "size": list(node.size), "flags": {},
            "order": order, "mode": 0,
            "inputs": [{"name": n, "type": t, "link": in_links.get((key, i))} for i, (n, t) in enumerate(node.inputs)],
            "outputs": [{"name": n, "type": t, "links": out_links.get((key, i), []), "slot_index": i}
                        for i, (n, t) in enumerate(node.outputs)],
            "properties": {"Node name for S&R": node.type},
            "widgets_values": node.widgets,
        }
        if node.title:
            entry["title"] = node.title
        if node.type == "Note":
            entry["color"], entry["bgcolor"] = "#432", "#653"
        serialised.append(entry)
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": serialised, "links": link_rows,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def _layout(nodes: dict[str, Node], columns: list[list[str]]) -> None:
    x = 40
    for column in columns:
        y = 40
        for key in column:
            nodes[key].pos = (x, y)
            y += nodes[key].size[1] + 60
        x += max(nodes[key].size[0] for key in column) + 60


def _base(model: str, prompt: str, note_text: str, strength: float = 1.0, steps: int = 50,
          sampler_name: str = "Flow") -> tuple[dict, list]:
    nodes = {"note": note(model, note_text), "loader": loader(model), "text": text_encode(prompt),
             "sampler": sampler(strength, steps, sampler_name), "decode": decode(), "video": create_video(),
             "save": save_video("")}
    links = [("loader", "model", "sampler", "model"), ("loader", "vae", "sampler", "vae"),
             ("loader", "text_encoder", "text", "text_encoder"), ("text", "positive", "sampler", "positive"),
             ("text", "negative", "sampler", "negative"),
             ("loader", "vae", "decode", "vae"), ("sampler", "samples", "decode", "samples"),
             ("decode", "frames", "video", "images"), ("video", "VIDEO", "save", "video")]
    return nodes, links


def workflows() -> dict[str, dict]:
    out = {}
    prompt = ("A young woman with beautiful clear eyes and blonde hair stands in a forest, wearing a white dress and "
              "a crown. Her expression is serene. The camera slowly moves in.")

    nodes, links = _base("EasyAnimateV5.1-7b-zh", prompt, "Text-to-video: write the prompt and press Queue.")
    nodes["save"].widgets[0] = "EasyAnimate/t2v"
    _layout(nodes, [["note", "loader"], ["text"], ["sampler"], ["decode", "video"], ["save"]])
    out["t2v"] = _build(nodes, links)

    nodes, links = _base("EasyAnimateV5.1-7b-zh-InP", prompt, "Image-to-video: load the first frame in Load Image. "
                         "Connect an image to end_image as well to fix the last frame.")
    nodes["image"], nodes["save"].widgets[0] = load_image(), "EasyAnimate/i2v"
    links.append(("image", "IMAGE", "sampler", "start_image"))
    _layout(nodes, [["note", "loader", "image"], ["text"], ["sampler"], ["decode", "video"], ["save"]])
    out["i2v"] = _build(nodes, links)

    nodes, links = _base("EasyAnimateV5.1-7b-zh-InP", prompt, "Video-to-video: load a video (at least 49 frames at "
                         "672x384 or any size; it is resized). denoise_strength 0.7 keeps the layout, 1.0 keeps "
                         "nothing.", strength=0.7)
    loaded, components = load_video("input_video.mp4")
    nodes["load"], nodes["frames"], nodes["save"].widgets[0] = loaded, components, "EasyAnimate/v2v"
    links += [("load", "VIDEO", "frames", "video"), ("frames", "images", "sampler", "input_video")]
    _layout(nodes, [["note", "loader", "load"], ["text", "frames"], ["sampler"], ["decode", "video"], ["save"]])
    out["v2v"] = _build(nodes, links)

    nodes, links = _base("EasyAnimateV5.1-7b-zh-Control", prompt, "Control video: load a pose, canny or depth video "
                         "(49+ frames) and the reference first frame.")
    loaded, components = load_video("control_video.mp4")
    nodes.update(load=loaded, frames=components, image=load_image())
    nodes["save"].widgets[0] = "EasyAnimate/control"
    links += [("load", "VIDEO", "frames", "video"), ("frames", "images", "sampler", "control_video"),
              ("image", "IMAGE", "sampler", "reference_image")]
    _layout(nodes, [["note", "loader", "load"], ["text", "frames", "image"], ["sampler"], ["decode", "video"],
                    ["save"]])
    out["control"] = _build(nodes, links)

    nodes, links = _base("EasyAnimateV5.1-7b-zh-Control", "A dog walks along the drawn path.",
                         "Trajectory: load the reference image and queue: the example track runs, and the image "
                         "appears in the trajectory canvas. Then draw one track per moving object over it (click "
                         "to add points, drag to move) and queue again. The preview shows the control video.")
    drawing = json.dumps({"version": 1, "canvas": {"width": 672, "height": 384}, "frames": 49,
                          "tracks": [{"points": [[0.2, 0.7], [0.5, 0.45], [0.8, 0.6]]}]})
    nodes["image"] = load_image()
    nodes["trajectory"] = Node("EasyAnimateTrajectory", [drawing, 672, 384, 49, "crop"],
                               inputs=[("image", "IMAGE"), ("coordinates", "STRING"), ("canvas_mask", "MASK")],
                               outputs=[("trajectory", "EASYANIMATE_TRAJECTORY"), ("control_video", "IMAGE")],
                               size=(480, 520))
    nodes["preview"] = Node("PreviewImage", [], inputs=[("images", "IMAGE")], size=(320, 260))
    nodes["save"].widgets[0] = "EasyAnimate/trajectory"
    links += [("image", "IMAGE", "trajectory", "image"), ("image", "IMAGE", "sampler", "reference_image"),
              ("trajectory", "trajectory", "sampler", "trajectory"),
              ("trajectory", "control_video", "preview", "images")]
    _layout(nodes, [["note", "loader", "image"], ["trajectory", "preview"], ["text"], ["sampler"],
                    ["decode", "video"], ["save"]])
    out["trajectory"] = _build(nodes, links)

    nodes, links = _base("EasyAnimateV5.1-7b-zh-Control-Camera", "A quiet mountain lake at sunrise.",
                         "Camera control: load the first frame; the two presets move at once (a diagonal). Chain "
                         "EasyAnimate Camera Join for one move after another.", steps=43)
    camera_out = [("camera", "EASYANIMATE_CAMERA")]
    nodes["pan_up"] = Node("EasyAnimateCameraPreset", ["Pan Up", 49, 1.0, 0.532139961, 0.946026558],
                           outputs=camera_out, size=(320, 200))
    nodes["pan_left"] = Node("EasyAnimateCameraPreset", ["Pan Left", 49, 1.0, 0.532139961, 0.946026558],
                             outputs=camera_out, size=(320, 200))
    nodes["combine"] = Node("EasyAnimateCameraCombine", [], inputs=[(f"camera_{i}", "EASYANIMATE_CAMERA")
                                                                    for i in range(1, 5)],
                            outputs=camera_out, size=(280, 130))
    nodes["image"], nodes["save"].widgets[0] = load_image(), "EasyAnimate/camera"
    links += [("pan_up", "camera", "combine", "camera_1"), ("pan_left", "camera", "combine", "camera_2"),
              ("combine", "camera", "sampler", "camera"), ("image", "IMAGE", "sampler", "reference_image")]
    _layout(nodes, [["note", "loader", "image"], ["pan_up", "pan_left", "combine"], ["text"], ["sampler"],
                    ["decode", "video"], ["save"]])
    out["camera"] = _build(nodes, links)

    nodes, links = _base("EasyAnimateV5.1-7b-zh", prompt, "LoRA: put the LoRA file in ComfyUI/models/loras/ "
                         "(official EasyAnimate, diffusers/PEFT or our trainer's format) and pick it. Chain more "
                         "LoRA loaders to stack styles.")
    nodes["lora"] = Node("EasyAnimateLoraLoader", ["easyanimate_style.safetensors", 0.8],
                         inputs=[("model", "MODEL")], outputs=[("model", "MODEL")],
                         size=(340, 110))
    nodes["save"].widgets[0] = "EasyAnimate/lora"
    links = [link for link in links if link[2:] != ("sampler", "model")]
    links += [("loader", "model", "lora", "model"), ("lora", "model", "sampler", "model")]
    _layout(nodes, [["note", "loader", "lora"], ["text"], ["sampler"], ["decode", "video"], ["save"]])
    out["lora"] = _build(nodes, links)
    out["lora_training"] = lora_training(prompt)
    out["native"] = native(prompt)

    v5 = ("EasyAnimate V5 (Bert + mT5 text encoders) samples with its scheduler_config.json: DDIM as the official "
          "V5 workflows, or Euler, Euler A, DPM++, PNDM; KSampler works on the model too (ddim with ddim_uniform).")
    nodes, links = _base("EasyAnimateV5-7b-zh", prompt, f"Text-to-video with {v5}", sampler_name="DDIM")
    nodes["save"].widgets[0] = "EasyAnimate/v5_t2v"
    _layout(nodes, [["note", "loader"], ["text"], ["sampler"], ["decode", "video"], ["save"]])
    out["v5_t2v"] = _build(nodes, links)

    nodes, links = _base("EasyAnimateV5-7b-zh-InP", prompt, f"Image-to-video: load the first frame in Load Image "
                         f"(connect an image to end_image as well to fix the last frame). {v5}", sampler_name="DDIM")
    nodes["image"], nodes["save"].widgets[0] = load_image(), "EasyAnimate/v5_i2v"
    links.append(("image", "IMAGE", "sampler", "start_image"))
    _layout(nodes, [["note", "loader", "image"], ["text"], ["sampler"], ["decode", "video"], ["save"]])
    out["v5_i2v"] = _build(nodes, links)
    return out


def native(prompt: str) -> dict:
    """Image-to-video with ComfyUI's own sampling nodes on the EasyAnimate MODEL: LoraLoaderModelOnly, EasyCache,
    EasyAnimate Conditioning, then SamplerCustomAdvanced with euler and EasyAnimate Scheduler."""
    model = "EasyAnimateV5.1-7b-zh-InP"
    nodes = {
        "note": note(model, "EasyAnimate with ComfyUI's own nodes: LoraLoaderModelOnly takes EasyAnimate LoRAs "
                     "(official, diffusers/PEFT or our trainer's), EasyCache skips steps whose output barely "
                     "changes, and SamplerCustomAdvanced samples with euler on EasyAnimate Scheduler's sigmas, "
                     "which equals EasyAnimate Sampler. Any other sampler or KSampler works too. Load the first "
                     "frame in Load Image; bypass the LoRA node (Ctrl+B) if you have no LoRA."),
        "loader": loader(model), "text": text_encode(prompt), "image": load_image(),
        "lora": Node("LoraLoaderModelOnly", ["easyanimate_style.safetensors", 0.8], inputs=[("model", "MODEL")],
                     outputs=[("MODEL", "MODEL")], size=(320, 110)),
        "cache": Node("EasyCache", [0.2, 0.15, 0.95, False], inputs=[("model", "MODEL")],
                      outputs=[("MODEL", "MODEL")], size=(320, 160)),
        "condition": Node("EasyAnimateConditioning", [672, 384, 49, 43, "crop"],
                          inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                                  ("vae", "EASYANIMATE_VAE"), *SAMPLER_OPTIONAL],
                          outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                                   ("latent", "LATENT")], size=(340, 330)),
        "noise": Node("RandomNoise", [43, "fixed"], outputs=[("NOISE", "NOISE")], size=(300, 110)),
        "guider": Node("CFGGuider", [6.0], inputs=[("model", "MODEL"), ("positive", "CONDITIONING"),
                                                   ("negative", "CONDITIONING")],
                       outputs=[("GUIDER", "GUIDER")], size=(300, 110)),
        "select": Node("KSamplerSelect", ["euler"], outputs=[("SAMPLER", "SAMPLER")], size=(300, 80)),
        "schedule": Node("EasyAnimateScheduler", [50, 1.0], inputs=[("model", "MODEL")],
                         outputs=[("sigmas", "SIGMAS")], size=(300, 110)),
        "sample": Node("SamplerCustomAdvanced", [], inputs=[("noise", "NOISE"), ("guider", "GUIDER"),
                                                           ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
                                                           ("latent_image", "LATENT")],
                       outputs=[("output", "LATENT"), ("denoised_output", "LATENT")], size=(300, 160)),
        "decode": decode(), "video": create_video(), "save": save_video("EasyAnimate/native"),
    }
    links = [("loader", "model", "lora", "model"), ("lora", "MODEL", "cache", "model"),
             ("loader", "text_encoder", "text", "text_encoder"),
             ("cache", "MODEL", "condition", "model"), ("text", "positive", "condition", "positive"),
             ("text", "negative", "condition", "negative"), ("loader", "vae", "condition", "vae"),
             ("image", "IMAGE", "condition", "start_image"),
             ("cache", "MODEL", "guider", "model"), ("condition", "positive", "guider", "positive"),
             ("condition", "negative", "guider", "negative"), ("cache", "MODEL", "schedule", "model"),
             ("noise", "NOISE", "sample", "noise"), ("guider", "GUIDER", "sample", "guider"),
             ("select", "SAMPLER", "sample", "sampler"), ("schedule", "sigmas", "sample", "sigmas"),
             ("condition", "latent", "sample", "latent_image"), ("loader", "vae", "decode", "vae"),
             ("sample", "output", "decode", "samples"), ("decode", "frames", "video", "images"),
             ("video", "VIDEO", "save", "video")]
    _layout(nodes, [["note", "loader", "image"], ["lora", "cache", "text"], ["condition"],
                    ["noise", "guider", "select", "schedule"], ["sample", "decode", "video"], ["save"]])
    return _build(nodes, links)


def lora_training(prompt: str) -> dict:
    """Train a LoRA on a dataset, then sample with it: the LoRA path flows from the trainer to the loader."""
    model = "EasyAnimateV5.1-7b-zh"
    nodes, links = _base(model, prompt, (
        "LoRA training, then sampling with the result. Point EasyAnimate Training Dataset at a metadata .json "
        "(a list of {\"file_path\", \"text\", \"type\": \"image\" or \"video\"}) or at a folder of images and "
        "videos with same-named .txt captions. Training runs in its own process (watch the loss in the console); "
        "Cancel stops it after the current step and queueing again resumes from the last checkpoint. Settings "
        "here (fp8 base weights, gradient checkpointing, 256 px, 25 frames, rank 64) are meant for a 24 GB GPU "
        "(an estimate); the reference trains rank 128 at 512 px and 49 frames on 80 GB."))
    nodes["save"].widgets[0] = "EasyAnimate/lora_training"
    nodes["dataset"] = Node("EasyAnimateTrainingDataset", ["/path/to/dataset/metadata.json", "", ""],
                            outputs=[("dataset", "EASYANIMATE_DATASET"), ("info", "STRING")], size=(380, 150))
    nodes["train"] = Node("EasyAnimateTrainLoRA", [
        model, "EasyAnimate/lora_training", "my_lora", 1000, 64, 32.0, 1e-4, 1, 1, 256, 512, 25, "bf16",
        True, True, 100, 42, "fixed", True, prompt, 672, 384, 49, 25], inputs=[("dataset", "EASYANIMATE_DATASET")],
        outputs=[("lora_path", "STRING"), ("log", "STRING")], size=(380, 620))
    nodes["lora"] = Node("EasyAnimateLoraLoaderFromPath", [1.0],
                         inputs=[("model", "MODEL"), ("lora_path", "STRING")],
                         outputs=[("model", "MODEL")], size=(340, 110))
    links = [link for link in links if link[2:] != ("sampler", "model")]
    links += [("dataset", "dataset", "train", "dataset"), ("train", "lora_path", "lora", "lora_path"),
              ("loader", "model", "lora", "model"), ("lora", "model", "sampler", "model")]
    _layout(nodes, [["note", "dataset"], ["train"], ["loader", "lora"], ["text"], ["sampler"], ["decode", "video"],
                    ["save"]])
    return _build(nodes, links)


def main() -> None:
    for mode, workflow in workflows().items():
        path = ROOT / "workflows" / f"easyanimate_{mode}.json"
        path.write_text(json.dumps(workflow, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
