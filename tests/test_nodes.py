"""The nodes through ComfyUI's V1 contract: declarations, and full graph runs inside the real ComfyUI modules
(tests/comfyui_env.py): progress, previews, Cancel and LoRA patches as ComfyUI handles them."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from conftest import load_pack

pack = load_pack()
NODES = pack.NODE_CLASS_MAPPINGS
# EasyAnimate Sampler without its speed options: every step computed, both passes.
EXACT = dict(teacache_threshold=0.0, teacache_start_steps=1, teacache_end_steps=1, cfg_skip_ratio=0.0)


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_v1_contract(node_id):
    cls = NODES[node_id]
    assert node_id.startswith("EasyAnimate") and node_id in pack.NODE_DISPLAY_NAME_MAPPINGS
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    required, optional = spec.get("required", {}), spec.get("optional", {})
    for name, declaration in {**required, **optional}.items():
        assert isinstance(declaration, tuple) and 1 <= len(declaration) <= 2, name
        kind = declaration[0]
        assert isinstance(kind, (str, list)), f"{name}: a combo must be a list"
        if isinstance(kind, list):
            assert kind and all(isinstance(option, str) for option in kind), f"{name}: empty combo"
        assert declaration[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        if isinstance(kind, str) and kind in ("INT", "FLOAT") and "default" in declaration[1]:
            options = declaration[1]
            assert options.get("min", -float("inf")) <= options["default"] <= options.get("max", float("inf"))
    function = getattr(cls, cls.FUNCTION)
    params = inspect.signature(function).parameters
    names = [p for p in params if p != "self"]
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    assert [n for n in names if params[n].kind is not params[n].VAR_KEYWORD][: len(required)] == list(required)
    for name in optional:
        assert (name in params and params[name].default is None) or has_var_kw, f"{node_id}: optional {name}"
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    assert cls.CATEGORY.startswith("EasyAnimate") and cls.DESCRIPTION


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from easyanimate_core.demo import write_demo_model

    root = tmp_path_factory.mktemp("models")
    for variant in ("inp", "control", "camera"):
        write_demo_model(root / f"demo-{variant}", variant=variant)
    return root


def _run(node_id, **inputs):
    node = NODES[node_id]()
    return getattr(node, node.FUNCTION)(**inputs)


def _load(model_name, memory_mode="model_cpu_offload"):
    return _run("EasyAnimateModelLoader", model=model_name, precision="fp32", memory_mode=memory_mode,
                blocks_on_gpu=-1, weight_dtype="default")


def _graph(model_name, mode_inputs=None, steps=2, frames=5, seed=1):
    model, text_encoder, vae, info = _load(model_name)
    positive, negative = _run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="")
    (latent,) = _run("EasyAnimateSampler", model=model, vae=vae, positive=positive, negative=negative, width=48,
                     height=32, frames=frames, steps=steps, guidance=6.0, seed=seed, denoise_strength=1.0,
                     **EXACT,
                     **(mode_inputs or {}))
    (images,) = _run("EasyAnimateDecode", vae=vae, samples=latent, tile_size=0)
    return model, vae, info, latent, images


def test_loader_lists_folders_and_reports_the_variant(comfyui):
    combo = NODES["EasyAnimateModelLoader"].INPUT_TYPES()["required"]["model"][0]
    assert combo == ["demo-camera", "demo-control", "demo-inp"]
    with pytest.raises(FileNotFoundError, match="Model folder 'nope' not found in .*Put the model folder"):
        _load("nope")


def test_the_loader_gives_comfyui_a_model_patcher_with_the_released_sampling(comfyui):
    import comfy.model_patcher

    model, text_encoder, vae, info = _load("demo-inp")
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    for component in (text_encoder, vae):
        assert isinstance(component, comfy.model_patcher.ModelPatcher)
    base = model.model
    assert base.latent_format.latent_channels == 16 and base.latent_format.latent_dimensions == 3
    assert base.latent_format.scale_factor == vae.model.component.scaling_factor
    sampling = base.model_sampling
    assert sampling.shift == pytest.approx(2.718281828) and sampling.multiplier == 1000
    layer = base.diffusion_model.transformer_blocks[0].attn1.to_q
    assert hasattr(layer, "comfy_cast_weights")  # built from ComfyUI's layer classes
    assert model.model_size() > 0 and "InP" in info


def test_text_to_video_and_image_to_video_graphs_run(comfyui):
    _, _, info, latent, images = _graph("demo-inp")
    assert "InP" in info
    assert latent["samples"].shape == (1, 16, 2, 4, 6)
    assert images.shape == (5, 32, 48, 3) and 0 <= images.min() and images.max() <= 1
    start = torch.rand(1, 32, 48, 3)
    _, _, _, i2v, _ = _graph("demo-inp", {"start_image": start})
    assert not torch.equal(i2v["samples"], latent["samples"])


def test_text_encode_gives_comfyui_conditioning(comfyui):
    _, text_encoder, _, _ = _load("demo-inp")
    positive, negative = _run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="")
    (states, extra), = positive
    assert states.shape == (1, 256, 64) and extra == {}
    assert not torch.equal(states, negative[0][0])


def test_camera_and_trajectory_graphs(comfyui):
    (pan,) = _run("EasyAnimateCameraPreset", preset="Pan Up", frames=5, speed=1.0, fx=0.53, fy=0.95)
    (left,) = _run("EasyAnimateCameraPreset", preset="Pan Left", frames=5, speed=1.0, fx=0.53, fy=0.95)
    (diagonal,) = _run("EasyAnimateCameraCombine", camera_1=pan, camera_2=left)
    (joined,) = _run("EasyAnimateCameraJoin", first=pan, second=left, frames=0)
    assert len(diagonal) == 5 and len(joined) == 10
    reference = torch.rand(1, 32, 48, 3)
    _, _, _, latent, _ = _graph("demo-camera", {"camera": diagonal, "reference_image": reference})
    assert latent["samples"].shape == (1, 16, 2, 4, 6)
    drawing = json.dumps({"version": 1, "tracks": [{"points": [[0.1, 0.1], [0.9, 0.9]]}]})
    trajectory, video = _run("EasyAnimateTrajectory", trajectory=drawing, width=48, height=32, frames=5)
    assert video.shape == (5, 32, 48, 3)
    _graph("demo-control", {"trajectory": trajectory, "reference_image": reference})
    with pytest.raises(ValueError, match="draw at least one track"):
        _run("EasyAnimateTrajectory", trajectory='{"version": 1, "tracks": []}', width=48, height=32, frames=5)


def test_a_mode_the_model_cannot_do_is_refused_before_any_work(comfyui):
    (pan,) = _run("EasyAnimateCameraPreset", preset="Pan Up", frames=5, speed=1.0, fx=0.53, fy=0.95)
    with pytest.raises(ValueError, match="camera needs a Control-Camera model"):
        _graph("demo-control", {"camera": pan})
    assert comfyui["progress"] == []


def test_progress_is_reported_with_previews(comfyui):
    _graph("demo-inp", steps=3)
    sampler_updates = [p for p in comfyui["progress"] if p[1] == 3]
    assert sampler_updates == [(1, 3, True), (2, 3, True), (3, 3, True)]
    assert any(p[1] == 2 for p in comfyui["progress"])  # decode: one update per latent frame


def test_the_vae_encodes_of_the_sampler_and_the_encode_node_report_progress(comfyui):
    _, vae, _, _, _ = _graph("demo-inp", {"start_image": torch.rand(1, 32, 48, 3)}, steps=3)
    first_step = comfyui["progress"].index((1, 3, True))
    encode = comfyui["progress"][:first_step]  # the start image's encode runs before the first step
    assert encode and encode[-1][0] == encode[-1][1] and not any(p[2] for p in encode)
    comfyui["progress"].clear()
    _run("EasyAnimateEncode", vae=vae, frames=torch.rand(5, 32, 48, 3))
    done = [p[:2] for p in comfyui["progress"]]
    assert done and done[-1][0] == done[-1][1] and [d for d, _ in done] == sorted(d for d, _ in done)


def test_an_interrupt_stops_the_run_and_leaves_the_model_usable_and_unchanged(comfyui):
    import comfy.model_management as mm

    from easyanimate_core.lora import LoraLayer, save_lora

    model, text_encoder, vae, _ = _load("demo-inp")
    transformer = model.model.diffusion_model
    layers = {"proj_out": LoraLayer(torch.randn(2, transformer.config.inner_dim), torch.randn(64, 2), 2.0)}
    save_lora(comfyui["loras"] / "style.safetensors", layers)
    assert NODES["EasyAnimateLoraLoader"].INPUT_TYPES()["required"]["lora_name"][0] == ["style.safetensors"]
    (with_lora,) = _run("EasyAnimateLoraLoader", model=model, lora_name="style.safetensors", strength=1.0)
    assert model.patches == {} and list(with_lora.patches) == ["diffusion_model.proj_out.weight"]
    positive, negative = _run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="")
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    args = dict(vae=vae, positive=positive, negative=negative, width=48, height=32, frames=5, steps=4, guidance=6.0,
                seed=1, denoise_strength=1.0, **EXACT)
    comfyui["interrupt_after"] = 2
    with pytest.raises(mm.InterruptProcessingException):
        _run("EasyAnimateSampler", model=with_lora, **args)
    assert [p[0] for p in comfyui["progress"] if p[1] == 4] == [1, 2]
    comfyui["interrupt_after"] = None
    (plain,) = _run("EasyAnimateSampler", model=model, **args)  # ComfyUI takes the LoRA's patch off again
    assert all(torch.equal(before[k], v) for k, v in transformer.state_dict().items())
    (styled,) = _run("EasyAnimateSampler", model=with_lora, **args)
    (again,) = _run("EasyAnimateSampler", model=model, **args)
    assert torch.equal(plain["samples"], again["samples"])
    assert not torch.equal(plain["samples"], styled["samples"])
    mm.unload_all_models()
    assert all(torch.equal(before[k], v) for k, v in transformer.state_dict().items())


def test_decode_refuses_an_image_model_latent(comfyui):
    _, _, vae, _ = _load("demo-inp")
    with pytest.raises(ValueError, match=r"\(1, 4, 64, 64\).*EasyAnimate video latents"):
        _run("EasyAnimateDecode", vae=vae, samples={"samples": torch.zeros(1, 4, 64, 64)}, tile_size=0)


@pytest.mark.parametrize("target, error, stage", [
    ("easyanimate_core.transformer.EasyAnimateTransformer.forward", "gpu", "sampling"),
    ("easyanimate_core.text_encoder.QwenTextEncoder.encode", "host", "text encoding"),
    ("easyanimate_core.vae.MagvitVAE.decode", "gpu", "VAE decode"),
    ("easyanimate_core.vae.MagvitVAE.encode", "host", "VAE encode of the input images and videos"),
])
def test_out_of_memory_in_a_node_becomes_comfyuis_oom_with_a_plan(comfyui, monkeypatch, target, error, stage):
    import importlib

    import comfy.model_management as mm

    module, owner, method = target.rsplit(".", 2)
    error = (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB") if error == "gpu"
             else RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes"))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(getattr(importlib.import_module(f"{pack.__name__}.{module}"), owner), method, fail)
    with pytest.raises(mm.OOM_EXCEPTION) as caught:  # ComfyUI's execution still frees its models for it
        _graph("demo-inp", {"start_image": torch.rand(1, 32, 48, 3)})
    message = str(caught.value)
    assert type(caught.value).__name__ == "OutOfMemoryPlan" and f"during {stage} while allocating" in message
    assert "EasyAnimate Model Loader" in message or "Free host RAM" in message
    assert "Unload models" in message and "--memory-mode" not in message
    assert ("tile_size on EasyAnimate Decode" in message) == stage.startswith("VAE")


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_on_a_cpu_only_comfyui_the_vae_runs_in_fp32(comfyui, caplog, precision):
    model, text_encoder, vae, info = _run("EasyAnimateModelLoader", model="demo-inp", precision=precision,
                                          memory_mode="model_cpu_offload", blocks_on_gpu=-1, weight_dtype="default")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    assert vae.model.component.dtype == torch.float32  # the test machine's ComfyUI computes on the CPU
    assert text_encoder.model.component.dtype == dtype and model.model.diffusion_model.dtype == dtype
    assert ("VAE in fp32 on the CPU" in info) == (precision != "fp32")
    assert ("~35x slower" in caplog.text) == (precision != "fp32")


@pytest.mark.parametrize("where", ["transformer", "vae_encode", "vae_decode", "text_encoder"])
def test_cancel_is_checked_before_every_block_not_only_between_steps(comfyui, where):
    """Cancel pressed while a block runs stops the node before the next block (one step or one VAE chunk can
    take minutes under sequential offload or block swap); the hooks are gone afterwards."""
    import comfy.model_management as mm

    model, text_encoder, vae, _ = _load("demo-inp")
    positive, negative = _run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="")
    transformer, autoencoder = model.model.diffusion_model, vae.model.component
    if where == "transformer":
        blocks = transformer.repeated_blocks()
    elif where == "text_encoder":
        blocks = text_encoder.model.component.repeated_blocks()
    else:
        part = autoencoder.encoder if where == "vae_encode" else autoencoder.decoder
        blocks = [m for m in part.modules() if type(m).__name__ == "ResidualBlock"]
    assert len(blocks) >= 2 or where == "text_encoder"  # its one layer runs twice: prompt, then negative
    ran = []

    def press_cancel(block, args, output):
        ran.append(block)
        mm.interrupt_current_processing(True)

    handles = [block.register_forward_hook(press_cancel) for block in blocks]
    try:
        with pytest.raises(mm.InterruptProcessingException):
            if where == "text_encoder":
                _run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="")
            elif where == "vae_decode":
                _run("EasyAnimateDecode", vae=vae, samples={"samples": torch.randn(1, 16, 2, 4, 6)}, tile_size=0)
            else:
                _run("EasyAnimateSampler", model=model, vae=vae, positive=positive, negative=negative, width=48,
                     height=32, frames=5, steps=2, guidance=6.0, seed=1, denoise_strength=1.0, **EXACT,
                     start_image=torch.rand(1, 32, 48, 3))
    finally:
        for handle in handles:
            handle.remove()
        mm.interrupt_current_processing(False)
    assert len(ran) == 1  # the block that was running finished; the next one never started
    for module in (transformer, autoencoder, text_encoder.model.component):
        assert not any(m._forward_pre_hooks for m in module.modules())


def test_path_inputs_stay_inside_comfyuis_folders(comfyui, tmp_path, tmp_path_factory, monkeypatch):
    """Pose file, LoRA by path and dataset paths resolve in ComfyUI's input folder (relative), its output folder
    or a model folder (extra_model_paths.yaml included); anything else, links followed, is refused by name
    before the file is opened."""
    import folder_paths

    outside = tmp_path_factory.mktemp("elsewhere")
    secret = outside / "poses.txt"
    secret.write_text("not for the workflow\n")
    (tmp_path / "link.txt").symlink_to(secret)
    model, _, _, _ = _load("demo-inp")
    attempts = [
        ("EasyAnimateCameraPoseFile", dict(path=str(secret), frames=0), "path"),
        ("EasyAnimateCameraPoseFile", dict(path="../" + outside.name + "/poses.txt", frames=0), "path"),
        ("EasyAnimateCameraPoseFile", dict(path="link.txt", frames=0), "path"),
        ("EasyAnimateCameraPoseFile", dict(path="/etc/passwd", frames=0), "path"),
        ("EasyAnimateLoraLoaderFromPath", dict(model=model, lora_path=str(outside / "x.safetensors"), strength=1.0),
         "lora_path"),
        ("EasyAnimateTrainingDataset", dict(path=str(outside), default_caption="", data_root=""), "path"),
        ("EasyAnimateTrainingDataset", dict(path=str(tmp_path), default_caption="", data_root=str(outside)),
         "data_root"),
    ]
    for node_id, inputs, name in attempts:
        with pytest.raises(ValueError, match=f"^{name} = .* outside ComfyUI's input, output and model folders") as e:
            _run(node_id, **inputs)
        assert "not for the workflow" not in str(e.value)  # never the content of a file we refused to read
    # The same file is read once it sits in a model folder from extra_model_paths.yaml.
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "camera_poses", ([str(outside)], {".txt"}))
    with pytest.raises(ValueError) as e:  # now opened: refused for its content's format, not its place
        _run("EasyAnimateCameraPoseFile", path=str(secret), frames=0)
    assert "outside ComfyUI" not in str(e.value)
