"""Every example workflow against the node definitions: node types, widget values and link types."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, load_pack

pack = load_pack()
MODES = ("t2v", "i2v", "v2v", "control", "trajectory", "camera", "lora", "lora_training", "native", "v5_t2v",
         "v5_i2v")
WORKFLOWS = {mode: REPO_ROOT / "workflows" / f"easyanimate_{mode}.json" for mode in MODES}
# Input specs of the ComfyUI core nodes the workflows use, as ComfyUI's /object_info reports them.
CORE = json.loads((Path(__file__).parent / "data" / "comfyui_core_nodes.json").read_text(encoding="utf-8"))
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
# Combos whose options come from the user's disk: any name is valid in a shipped workflow.
DYNAMIC_COMBOS = {("EasyAnimateModelLoader", "model"), ("EasyAnimateLoraLoader", "lora_name"),
                  ("LoraLoaderModelOnly", "lora_name"),
                  ("EasyAnimateTrainLoRA", "model"), ("LoadImage", "image"), ("LoadVideo", "file")}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


def _definition(node_type: str) -> dict:
    """{"inputs": [(name, kind, options)], "outputs": [kind]} for one of ours or a core node."""
    if node_type in pack.NODE_CLASS_MAPPINGS:
        cls = pack.NODE_CLASS_MAPPINGS[node_type]
        spec = cls.INPUT_TYPES()
        inputs = [(name, decl[0], decl[1] if len(decl) > 1 else {})
                  for section in ("required", "optional") for name, decl in spec.get(section, {}).items()]
        return {"inputs": inputs, "outputs": list(cls.RETURN_TYPES)}
    core = CORE[node_type]
    inputs = []
    for section in ("required", "optional"):
        for name in core.get("input_order", {}).get(section, []):
            decl = core["input"][section][name]
            inputs.append((name, decl[0], decl[1] if len(decl) > 1 else {}))
    return {"inputs": inputs, "outputs": core["output"]}


def _is_widget(kind, options) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_KINDS) and not options.get("forceInput")


def _expected_widgets(node_type: str) -> list[tuple[str, object, dict]]:
    widgets = []
    for name, kind, options in _definition(node_type)["inputs"]:
        if not _is_widget(kind, options):
            continue
        widgets.append((name, kind, options))
        # The front end gives every INT named seed/noise_seed a control widget unless told otherwise.
        if options.get("control_after_generate", kind == "INT" and name in ("seed", "noise_seed")):
            widgets.append((f"{name}:control", "CONTROL", {}))
        if options.get("image_upload") or options.get("video_upload"):
            widgets.append((f"{name}:upload", "UPLOAD", {}))
    return widgets


def _check_value(node_type: str, name: str, kind, options: dict, value) -> None:
    where = f"{node_type}.{name} = {value!r}"
    if kind == "CONTROL":
        assert value in CONTROL_VALUES, where
    elif kind == "UPLOAD":
        assert value == "image", where
    elif isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        assert isinstance(value, str), where
        if (node_type, name) not in DYNAMIC_COMBOS:
            assert value in choices, where
    elif kind in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        if kind == "INT":
            assert float(value).is_integer(), where
        assert options.get("min", -float("inf")) <= value <= options.get("max", float("inf")), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where


def _compatible(output_kind: str, input_kind) -> bool:
    return input_kind == "*" or output_kind == "*" or output_kind == input_kind


@pytest.mark.parametrize("mode", MODES)
def test_workflow_matches_the_node_definitions(mode):
    workflow = json.loads(WORKFLOWS[mode].read_text(encoding="utf-8"))
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]) and max(nodes) <= workflow["last_node_id"]
    notes = [n for n in nodes.values() if n["type"] == "Note"]
    assert notes and "models/EasyAnimate/" in notes[0]["widgets_values"][0]
    for node in nodes.values():
        if node["type"] == "Note":
            continue
        assert node["type"] in pack.NODE_CLASS_MAPPINGS or node["type"] in CORE, node["type"]
        expected = _expected_widgets(node["type"])
        values = node.get("widgets_values", [])
        assert len(values) == len(expected), f"{node['type']}: {values} vs {[e[0] for e in expected]}"
        for (name, kind, options), value in zip(expected, values):
            _check_value(node["type"], name, kind, options, value)
    definitions = {node_id: _definition(n["type"]) for node_id, n in nodes.items() if n["type"] != "Note"}
    linked_inputs = set()
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        out_kind = definitions[src]["outputs"][src_slot]
        input_name = nodes[dst]["inputs"][dst_slot]["name"]
        declared = {name: k for name, k, _ in definitions[dst]["inputs"]}
        assert input_name in declared, f"{nodes[dst]['type']} has no input {input_name}"
        assert _compatible(out_kind, declared[input_name]), f"link {link_id}: {out_kind} -> {input_name}"
        assert kind == out_kind and nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        linked_inputs.add((dst, input_name))
    for node_id in definitions:
        node_type = nodes[node_id]["type"]
        required = (pack.NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES().get("required", {})
                    if node_type in pack.NODE_CLASS_MAPPINGS else CORE[node_type]["input"].get("required", {}))
        for name, decl in required.items():
            kind, options = decl[0], decl[1] if len(decl) > 1 else {}
            if not _is_widget(kind, options):
                assert (node_id, name) in linked_inputs, f"{node_type}.{name} is not connected"


def test_each_mode_uses_the_inputs_of_its_mode():
    expected = {"i2v": "start_image", "v2v": "input_video", "control": "control_video", "trajectory": "trajectory",
                "camera": "camera", "v5_i2v": "start_image"}
    for mode, path in WORKFLOWS.items():
        if mode == "native":
            continue
        workflow = json.loads(path.read_text(encoding="utf-8"))
        sampler = next(n for n in workflow["nodes"] if n["type"] == "EasyAnimateSampler")
        connected = {i["name"] for i in sampler["inputs"] if i["link"] is not None}
        assert connected - {"model", "vae", "positive", "negative"} == (
            {expected[mode]} if mode in expected else set()) | (
            {"reference_image"} if mode in ("control", "trajectory", "camera") else set())
    lora = json.loads(WORKFLOWS["lora"].read_text(encoding="utf-8"))
    assert any(n["type"] == "EasyAnimateLoraLoader" for n in lora["nodes"])
    training = json.loads(WORKFLOWS["lora_training"].read_text(encoding="utf-8"))
    types = {n["id"]: n["type"] for n in training["nodes"]}
    flows = {(types[src], types[dst]) for _, src, _, dst, _, _ in training["links"]}
    assert {("EasyAnimateTrainingDataset", "EasyAnimateTrainLoRA"), ("EasyAnimateTrainLoRA",
            "EasyAnimateLoraLoaderFromPath"), ("EasyAnimateLoraLoaderFromPath", "EasyAnimateSampler")} <= flows


def test_the_native_workflow_samples_with_core_nodes():
    workflow = json.loads(WORKFLOWS["native"].read_text(encoding="utf-8"))
    types = {n["id"]: n["type"] for n in workflow["nodes"]}
    flows = {(types[src], types[dst]) for _, src, _, dst, _, _ in workflow["links"]}
    assert {("EasyAnimateModelLoader", "LoraLoaderModelOnly"), ("LoraLoaderModelOnly", "EasyCache"),
            ("EasyCache", "CFGGuider"), ("EasyAnimateConditioning", "CFGGuider"),
            ("EasyAnimateScheduler", "SamplerCustomAdvanced"), ("EasyAnimateConditioning", "SamplerCustomAdvanced"),
            ("SamplerCustomAdvanced", "EasyAnimateDecode"), ("LoadImage", "EasyAnimateConditioning")} <= flows
    assert "EasyAnimateSampler" not in types.values()


def test_the_v5_workflows_load_v5_folders_and_sample_with_ddim():
    from easyanimate_core.samplers import DDPM_SAMPLERS

    for mode, model in (("v5_t2v", "EasyAnimateV5-7b-zh"), ("v5_i2v", "EasyAnimateV5-7b-zh-InP")):
        workflow = json.loads(WORKFLOWS[mode].read_text(encoding="utf-8"))
        by_type = {n["type"]: n for n in workflow["nodes"]}
        assert by_type["EasyAnimateModelLoader"]["widgets_values"][0] == model
        assert by_type["EasyAnimateSampler"]["widgets_values"][-1] == "DDIM" and "DDIM" in DDPM_SAMPLERS


def test_files_are_what_the_builder_writes():
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        import build_workflows
    finally:
        sys.path.pop(0)
    for mode, workflow in build_workflows.workflows().items():
        assert json.loads(WORKFLOWS[mode].read_text(encoding="utf-8")) == workflow, (
            f"{WORKFLOWS[mode].name} is stale: run python tools/build_workflows.py")
