"""Property tests over every reader: damaged input ends in a clear UserError or a valid result, never a crash.

Each reader gets a valid file written by the example scene, then random damage:
truncation, flipped bytes, and for the structured formats (JSON, YAML) values
swapped for other types or extremes. The outcome must be a UserError (the
message a user sees, exit 1) or a result that passes the same validation as
any other. Bounded (``MAX_EXAMPLES`` each) to keep the suite's time;
``MIP360_FUZZ_EXAMPLES`` raises it for a longer hunt.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mip360cli.config import DataConfig, load_config
from mip360cli.data.example import make_example
from mip360cli.data.scene import load_scene
from mip360cli.core.errors import UserError
from mip360cli.runs.camera_paths import load_path_file

MAX_EXAMPLES = int(os.environ.get("MIP360_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    out = {}
    for fmt, text in (("colmap", False), ("colmap_txt", True), ("llff", False), ("transforms", False),
                      ("easymocap", False)):
        make_example(root / fmt, fmt.split("_")[0], 6, 16, 12, colmap_binary=not text)
        out[fmt] = root / fmt
    return out


def _damage_bytes(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    b = bytearray(data[:max(0, len(data) - cut)])
    for pos, val in flips:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


BYTE_DAMAGE = st.tuples(st.integers(0, 64), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                     max_size=6))


def _expect_clear(fn) -> None:
    """``fn()`` returns, or raises UserError; anything else fails the test with the exception."""
    try:
        fn()
    except UserError:
        pass


def _reset(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("fmt, files", [
    ("colmap", ["sparse/0/cameras.bin", "sparse/0/images.bin"]),
    ("colmap_txt", ["sparse/0/cameras.txt", "sparse/0/images.txt"]),
    ("llff", ["poses_bounds.npy"]),
    ("transforms", ["transforms.json"]),
    ("easymocap", ["intri.yml", "extri.yml"]),
])
@FUZZ
@given(which=st.integers(0, 1), damage=BYTE_DAMAGE)
def test_damaged_camera_files_give_a_clear_error_or_a_valid_scene(pristine, tmp_path, fmt, files, which, damage):
    root = _reset(pristine[fmt], tmp_path / "scene")
    target = root / files[which % len(files)]
    target.write_bytes(_damage_bytes(target.read_bytes(), *damage))
    _expect_clear(lambda: load_scene(root, DataConfig()))


def _values():
    return st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                     st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=5),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _swap(tree, path: list[int], value):
    """Replace the node reached by following ``path`` (indices into dict values / list items) with ``value``."""
    if not path or not isinstance(tree, (dict, list)) or not tree:
        return value
    keys = list(tree) if isinstance(tree, dict) else list(range(len(tree)))
    k = keys[path[0] % len(keys)]
    tree[k] = _swap(tree[k], path[1:], value)
    return tree


@FUZZ
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=5), value=_values())
def test_transforms_json_with_values_of_any_type(pristine, tmp_path, path, value):
    root = _reset(pristine["transforms"], tmp_path / "scene")
    meta = json.loads((root / "transforms.json").read_text())
    (root / "transforms.json").write_text(json.dumps(_swap(meta, path, value)))
    _expect_clear(lambda: load_scene(root, DataConfig()))


@FUZZ
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=5), value=_values())
def test_camera_path_json_with_values_of_any_type(tmp_path, path, value):
    frames = [{"c2w": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3]], "fov_deg": 50},
              {"c2w": [[0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 3]]}]
    meta = _swap({"width": 8, "height": 6, "space": "input", "frames": frames}, path, value)
    f = tmp_path / "path.json"
    f.write_text(json.dumps(meta))
    _expect_clear(lambda: load_path_file(f, np.eye(4), (8, 6), np.array([[8.0, 0, 4], [0, 8, 3], [0, 0, 1]])))


@FUZZ
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=4), value=_values(), damage=BYTE_DAMAGE,
       structured=st.booleans())
def test_yaml_configs_with_values_of_any_type_or_damaged(tmp_path, path, value, damage, structured):
    tree = yaml.safe_load((Path(__file__).parent.parent / "configs" / "tiny.yaml").read_text())
    f = tmp_path / "c.yaml"
    if structured:
        f.write_text(yaml.safe_dump(_swap(tree, path, value)))
    else:
        f.write_bytes(_damage_bytes(yaml.safe_dump(tree).encode(), *damage))
    _expect_clear(lambda: load_config(f))


@FUZZ
@given(key=st.sampled_from(["data.ratio", "ratio", "render.chunk_rays", "model.nerf.width", "train.max_steps",
                            "cache.compression", "model.prop.samples", "data.alpha_background", "data.near"]),
       raw=st.one_of(st.text(max_size=6), st.sampled_from(["abc", "-1", "0", "1e400", "nan", "[1, 2]", "{a: 1}",
                                                           "true", "", "1.5", "[]"])))
def test_command_line_overrides_of_any_text(key, raw):
    _expect_clear(lambda: load_config("tiny", [f"{key}={raw}"]))
