from pathlib import Path

import pytest
import yaml

from mip360cli.config import (Config, config_from_dict, config_to_dict, dotted_keys, load_config,
                              parse_override, save_config)
from mip360cli.core.errors import UserError


def test_defaults_are_the_papers_numbers():
    cfg = Config()
    assert cfg.model.prop.samples == [64, 64] and cfg.model.nerf.samples == 32
    assert (cfg.model.nerf.width, cfg.model.nerf.depth, cfg.model.nerf.skip) == (1024, 8, 4)
    assert (cfg.train.lr_init, cfg.train.lr_final, cfg.train.batch_rays) == (2e-3, 2e-5, 16384)
    assert (cfg.data.near, cfg.data.far, cfg.data.test_every) == (0.2, 1e6, 8)


def test_default_yaml_lists_every_key_with_the_schema_defaults():
    assert load_config("default") == Config()
    text = yaml.safe_load((Path(__file__).parent.parent / "configs" / "default.yaml").read_text())

    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]

    assert sorted(leaves(text)) == sorted(dotted_keys())


def test_tiny_preset_extends_default():
    tiny = load_config("tiny")
    assert tiny.model.nerf.width < 1024 and tiny.train.batch_rays < 16384
    assert tiny.data == Config().data  # inherited unchanged from default.yaml


def test_overrides_and_aliases():
    cfg = load_config("tiny", ["train.lr_init=1e-3", "model.nerf.width=256", "ratio=0.5",
                               "frame_interval=2", "model.prop.samples=[16, 8]", "eval.split=train"])
    assert cfg.train.lr_init == 1e-3 and isinstance(cfg.train.lr_init, float)
    assert cfg.model.nerf.width == 256
    assert cfg.data.ratio == 0.5 and cfg.data.frame_interval == 2
    assert cfg.model.prop.samples == [16, 8]
    assert cfg.eval.split == "train"
    assert parse_override("ratio=0.25") == ("data.ratio", 0.25)


def test_values_from_flags_win_and_none_is_ignored():
    cfg = load_config(None, ["data.ratio=0.5"], {"data.ratio": 0.25, "cache.workers": None})
    assert cfg.data.ratio == 0.25 and cfg.cache.workers == 4


@pytest.mark.parametrize("override, message", [
    ("train.lr_int=1", "did you mean 'train.lr_init'"),
    ("lr_init=1", "did you mean 'train.lr_init'"),
    ("model.nerf.widht=3", "did you mean 'model.nerf.width'"),
    ("train.max_steps=abc", "'train.max_steps' must be an integer, got 'abc'"),
    ("train.max_steps=1.5", "must be an integer"),
    ("model.encoding.basis=foo", "must be one of 'xyz', 'icosahedron'"),
    ("model.opaque_background=3", "must be true or false"),
    ("model.prop.samples=5", "must be a list of an integer"),
    ("data.ratio=2", "data.ratio must be in (0, 1]"),
    ("novalue", "expected key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_yaml_file_with_base_and_errors(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("train:\n  max_steps: 10\n  batch_rays: 64\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ntrain:\n  batch_rays: 128\n")
    cfg = load_config(child)
    assert (cfg.train.max_steps, cfg.train.batch_rays) == (10, 128)

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: 10\n   batch_rays: 5\n")
    with pytest.raises(UserError, match=r"bad.yaml:3:\d+: malformed YAML"):
        load_config(bad)

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("trian:\n  max_steps: 10\n")
    with pytest.raises(UserError, match=r"unknown.yaml: unknown key 'trian'.*did you mean 'train"):
        load_config(unknown)

    cyc = tmp_path / "cyc.yaml"
    cyc.write_text("base: cyc.yaml\n")
    with pytest.raises(UserError, match="cycle"):
        load_config(cyc)

    with pytest.raises(UserError, match="no config file or preset named 'nope'"):
        load_config("nope")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("tiny", ["train.lr_init=1e-3"])
    save_config(cfg, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg
    assert load_config(tmp_path / "config.yaml") == cfg
    assert config_to_dict(again)["train"]["lr_init"] == 1e-3
