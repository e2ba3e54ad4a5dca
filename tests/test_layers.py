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
