"""The package as installed: every subpackage listed for the wheel, the presets inside it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_goes_into_the_wheel():
    """pyproject.toml lists the packages by hand (configs/ is mapped into the package): a new
    subpackage missing from the list would be missing from every regular install."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mip360cli").rglob("__init__.py")}
    assert set(setup["packages"]) == on_disk | {"mip360cli.configs"}
    assert setup["package-dir"] == {"mip360cli.configs": "configs"}
    assert (ROOT / "configs" / "__init__.py").is_file()
    assert setup["package-data"]["mip360cli.configs"] == ["*.yaml"]


def test_presets_are_found_through_the_installed_package():
    import importlib.resources

    from mip360cli.config import CONFIG_DIR, load_config, preset_names

    found = Path(str(importlib.resources.files("mip360cli.configs")))
    assert CONFIG_DIR == found and {"default", "tiny"} <= set(preset_names())
    assert load_config("tiny").model.nerf.width == 128


# ----------------------------------------------------------------------------- imports in one direction

# Top to bottom; a unit is one or more names (a subpackage, or a module at the top of the package).
# A module may import from its own unit and from units of lower layers: never from a higher layer,
# nor from another unit of its own layer.
LAYERS = [
    ("cli", [("mip360cli", "mip360cli.__main__", "mip360cli.cli")]),
    ("api and demo", [("mip360cli.api",), ("mip360cli.demo",)]),
    ("stages", [("mip360cli.train",), ("mip360cli.render",), ("mip360cli.eval",), ("mip360cli.view",),
                ("mip360cli.export",)]),
    ("runs", [("mip360cli.runs",)]),
    ("model and data", [("mip360cli.model",), ("mip360cli.data",)]),
    ("config", [("mip360cli.config", "mip360cli.configs")]),
    ("core", [("mip360cli.core",)]),
]


def _unit(module: str) -> tuple[int, tuple[str, ...]]:
    """(layer index, unit) of a dotted module name: the unit naming it or its longest enclosing package
    (the package root itself only by its own name)."""
    best, length = None, -1
    for i, (_, units) in enumerate(LAYERS):
        for unit in units:
            for name in unit:
                inside = module == name or (name != "mip360cli" and module.startswith(name + "."))
                if inside and len(name) > length:
                    best, length = (i, unit), len(name)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it where it belongs")
    return best


def _module_name(path: Path, package_root: Path) -> str:
    parts = list(path.relative_to(package_root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(package_root: Path, dotted: str) -> bool:
    where = package_root.joinpath(*dotted.split(".")[1:])
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def _imports(path: Path, module: str, package_root: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every mip360cli import in the file, at any depth (lazy ones too)."""
    import ast

    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mip360cli"):  # "from .runs import checkpoints": a submodule is the target
                found += [(node.lineno, f"{target}.{a.name}" if _is_module(package_root, f"{target}.{a.name}")
                           else target) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("mip360cli")]
    return found


def layer_violations(package_root: Path) -> list[str]:
    """Every import that goes up a layer, or across to another unit of the same layer."""
    bad = []
    for path in sorted(package_root.rglob("*.py")):
        module = _module_name(path, package_root)
        layer, unit = _unit(module)
        for line, target in _imports(path, module, package_root):
            t_layer, t_unit = _unit(target)
            if t_unit == unit or t_layer > layer:
                continue
            what = "up" if t_layer < layer else "across"
            bad.append(f"{path.relative_to(package_root.parent)}:{line}: {module} ({LAYERS[layer][0]}) imports "
                       f"{target} ({LAYERS[t_layer][0]}): {what} a layer")
    return bad


def test_imports_go_down_the_layers_only():
    assert layer_violations(ROOT / "mip360cli") == []


def test_an_upward_import_is_found_and_named(tmp_path):
    import shutil

    copy = tmp_path / "mip360cli"
    shutil.copytree(ROOT / "mip360cli", copy, ignore=shutil.ignore_patterns("__pycache__"))
    coord = copy / "model" / "coord.py"
    coord.write_text(coord.read_text() + "\n\ndef _planted():\n    from ..train import loop  # noqa\n")
    across = copy / "render" / "paths.py"
    across.write_text(across.read_text() + "\nfrom ..eval import metrics  # noqa\n")
    found = layer_violations(copy)
    assert len(found) == 2, found
    assert "mip360cli.model.coord (model and data) imports mip360cli.train.loop (stages): up a layer" in found[0]
    assert "mip360cli.render.paths (stages) imports mip360cli.eval.metrics (stages): across a layer" in found[1]
