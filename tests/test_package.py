"""The pack as ComfyUI, ComfyUI-Manager and the Comfy registry see it: import contract and metadata."""

import json
import re
import subprocess
import sys
import textwrap

import pytest
import tomllib
from conftest import PACK_ALIAS, REPO_ROOT
from packaging.requirements import Requirement

# Modules the pack must not import when ComfyUI loads it: heavy libraries (the nodes import them lazily) and
# ComfyUI's own modules (only nodes/_comfy.py touches those, inside its functions). ``nodes`` is ComfyUI's
# top-level module: the pack reaches its own ``nodes`` package only through a relative import.
FORBIDDEN_AT_IMPORT = (
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "optimum",
    "safetensors",
    "cv2",
    "imageio_ffmpeg",
    "comfy",
    "comfy_api",
    "comfy_extras",
    "folder_paths",
    "server",
    "nodes",
)
TORCH_FAMILY = re.compile(r"^(torch.*|triton.*|pytorch-triton.*|nvidia-.*|xformers)$", re.IGNORECASE)

# ComfyUI's nodes.load_custom_node names a pack folder's module after the folder's path, dots replaced, loads it
# from its __init__.py with no parent package, and puts custom_nodes/ (never the pack folder) on sys.path.
COMFYUI_STYLE_NAME = str(REPO_ROOT).replace(".", "_x_")


_REPORT = """
pack = sys.modules[name]
print(json.dumps({
    "new_modules": sorted(set(sys.modules) - before),
    "exports": {k: type(getattr(pack, k, None)).__name__
                for k in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY")},
    "node_count": len(getattr(pack, "NODE_CLASS_MAPPINGS", {})),
}))
"""


def _import_in_clean_interpreter(code: str) -> dict:
    # -I: no environment variables, no user site, and neither the working directory nor the repository on sys.path.
    script = "import json, sys\nbefore = set(sys.modules)\n" + textwrap.dedent(code) + _REPORT
    result = subprocess.run(
        [sys.executable, "-I", "-c", script], check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(
            f"""
            import importlib.util
            name = {COMFYUI_STYLE_NAME!r}
            spec = importlib.util.spec_from_file_location(name, {str(REPO_ROOT / "__init__.py")!r})
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            """,
            id="as-comfyui-loads-it",
        ),
        pytest.param(
            f"""
            import importlib.util
            name = {PACK_ALIAS!r}
            spec = importlib.util.spec_from_file_location(
                "pack_conftest", {str(REPO_ROOT / "tests" / "conftest.py")!r})
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            """,
            id="as-tests-load-it",
        ),
    ],
)
def test_importing_the_pack_is_cheap_and_exports_the_contract(code):
    report = _import_in_clean_interpreter(code)

    heavy = sorted({m.split(".")[0] for m in report["new_modules"]} & set(FORBIDDEN_AT_IMPORT))
    assert heavy == [], f"importing the pack imported {heavy}; import them inside the functions that need them"
    assert report["exports"] == {
        "NODE_CLASS_MAPPINGS": "dict",
        "NODE_DISPLAY_NAME_MAPPINGS": "dict",
        "WEB_DIRECTORY": "str",
    }
    assert report["node_count"] >= 10, "the pack registered no nodes"


def test_exports_under_the_alias():
    pack = sys.modules[PACK_ALIAS]
    from easyanimate_pack import nodes

    assert pack.NODE_CLASS_MAPPINGS is nodes.NODE_CLASS_MAPPINGS
    assert pack.NODE_DISPLAY_NAME_MAPPINGS is nodes.NODE_DISPLAY_NAME_MAPPINGS
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) <= set(pack.NODE_CLASS_MAPPINGS)
    assert all(node_id.startswith("EasyAnimate") for node_id in pack.NODE_CLASS_MAPPINGS)
    assert pack.WEB_DIRECTORY == "./web"


def test_web_directory_holds_only_javascript():
    # ComfyUI serves WEB_DIRECTORY and loads every .js file in it as a front-end extension.
    web = REPO_ROOT / sys.modules[PACK_ALIAS].WEB_DIRECTORY
    assert web.is_dir(), f"{web} is missing"
    others = [
        p.relative_to(REPO_ROOT).as_posix()
        for p in web.rglob("*")
        if p.is_file() and p.suffix != ".js" and p.name != ".gitkeep"
    ]
    assert others == []


def _requirements_txt() -> list[Requirement]:
    lines = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [Requirement(line.split("#", 1)[0].strip()) for line in lines if line.split("#", 1)[0].strip()]


def _pyproject() -> dict:
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_requirements_never_name_torch_and_use_lower_bounds_only():
    requirements = _requirements_txt()
    assert requirements, "requirements.txt lists no dependency"
    for req in requirements:
        assert not TORCH_FAMILY.match(req.name), f"{req}: ComfyUI owns torch and its CUDA packages"
        assert req.url is None and req.marker is None, f"{req}: plain name and lower bound only"
        assert [s.operator for s in req.specifier] == [">="], f"{req}: give exactly one lower bound (>=)"


def test_pyproject_dependencies_equal_requirements_txt():
    declared = {str(Requirement(d)) for d in _pyproject()["project"]["dependencies"]}
    assert declared == {str(r) for r in _requirements_txt()}


def test_registry_metadata():
    data = _pyproject()
    project, comfy = data["project"], data["tool"]["comfy"]
    assert "build-system" not in data, "the pack is not a pip-installable distribution"
    assert re.fullmatch(r"[a-z][a-z0-9]*([-_.][a-z0-9]+)*", project["name"]) and len(project["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert isinstance(comfy.get(key), str) and comfy[key], f"[tool.comfy] {key} is empty"
    assert isinstance(comfy.get("includes"), list)

    repository = project["urls"]["Repository"]
    owner_repo = repository.removeprefix("https://github.com/")
    icon_prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    assert comfy["Icon"].startswith(icon_prefix), comfy["Icon"]
    icon = REPO_ROOT / comfy["Icon"].removeprefix(icon_prefix)
    assert icon.is_file(), f"the Icon URL points at {icon}, which is not in the repository"
    assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plain_import_of_the_root_file_registers_nothing_and_does_not_fail():
    # pytest imports the repository root's __init__.py as a plain module when the clone's folder name is not an
    # identifier (ComfyUI-EasyAnimate); that must not break collection.
    report = _import_in_clean_interpreter(f"""
        import importlib.util
        name = "__init__"
        spec = importlib.util.spec_from_file_location(name, {str(REPO_ROOT / "__init__.py")!r},
                                                      submodule_search_locations=None)
        module = importlib.util.module_from_spec(spec)
        module.__package__ = ""
        sys.modules[name] = module
        spec.loader.exec_module(module)
        """)
    assert report["node_count"] == 0


def test_the_readme_names_every_node_by_its_display_name():
    """The README's node table lists each node under the name ComfyUI shows, and no node it does not have."""
    from conftest import load_pack

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("### Nodes (category EasyAnimate)", 1)[1].split("\n### ", 1)[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| EasyAnimate")]
    named = {name.strip() for row in rows for name in row.split(" / ")}
    assert named == set(load_pack().NODE_DISPLAY_NAME_MAPPINGS.values())
