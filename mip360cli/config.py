"""The one configuration schema shared by every stage.

Typed dataclasses with the paper's numbers as defaults (docs/algorithm.md), loaded
from YAML (a file may name a ``base:`` file it extends), overridden by dotted
``key=value`` arguments, validated with messages that name the key, the type
it expects and, for unknown keys, the closest known ones.

There is no global config object: :func:`load_config` returns a fresh
:class:`Config` and stages pass on only the section a function needs.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.resources
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from .core.errors import UserError
from .core.files import atomic_write_text, read_text_bounded
from .core.progress import parse_duration

FORMATS = ("auto", "colmap", "llff", "transforms", "easymocap")


@dataclass
class DataConfig:
    """Which images and cameras to use, and how to split them."""

    format: Literal["auto", "colmap", "llff", "transforms", "easymocap"] = "auto"
    """Camera format of the dataset folder; ``auto`` detects it."""
    ratio: float = 1.0
    """Image scale factor (images resized with INTER_AREA, intrinsics scaled)."""
    frame_interval: int = 1
    """Keep every k-th image (before the train/test split)."""
    test_every: int = 8
    """Hold out every n-th image (index % n == 0) for testing; 0 = no hold-out."""
    easymocap_frame: int = 0
    """EasyMocap only: which frame of each camera folder to use (sorted order)."""
    missing_images: Literal["skip", "error"] = "skip"
    """A frame whose image file is missing: ``skip`` it with a warning, or stop with an ``error``."""
    alpha: Literal["composite", "error"] = "composite"
    """Images with transparent pixels: ``composite`` them over ``alpha_background``, or refuse them."""
    alpha_background: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """RGB in [0, 1] behind transparent pixels (white, as Blender-style data expects)."""
    masks: Literal["auto", "none"] = "auto"
    """auto: use ``masks/`` beside ``images/`` when the dataset has it (PNG, the images' names; 0 = ignore
    the pixel): masked pixels are not trained on nor scored; none: use every pixel."""
    near: float = 0.2
    """Near distance of rays, in normalized scene units."""
    far: float = 1e6
    """Far distance of rays, in normalized scene units."""


@dataclass
class CacheConfig:
    """The HDF5 ray cache written by ``mip360 preprocess``."""

    path: str = ""
    """Cache file; empty = ``DATA/mip360_cache.h5``."""
    bucket_rays: int = 1 << 20
    """Rays per pre-shuffled bucket (the unit training reads at once)."""
    memory_mb: int = 1024
    """Memory budget of the external shuffle; peak use does not grow with the data."""
    workers: int = 4
    """Threads decoding images in parallel."""
    compression: Literal["none", "lzf", "gzip"] = "none"
    """Compression of the cached rays: none (fastest, 5 bytes/ray), lzf (~10% smaller), gzip."""
    seed: int = 0
    """Seed of the ray shuffle."""


@dataclass
class EncodingConfig:
    """Positional encodings of points and view directions."""

    basis: Literal["xyz", "icosahedron"] = "xyz"
    """``xyz``: PE of contract(x) plus x; ``icosahedron``: multinerf's 21-direction basis."""
    point_max_freq: int = 12
    """Point frequencies 2^0 .. 2^(n-1)."""
    view_max_freq: int = 4
    """View-direction frequencies 2^0 .. 2^(n-1)."""
    integrated: bool = False
    """The paper's integrated positional encoding (anti-aliasing): each sample is a conical frustum of the
    pixel's cone, as a Gaussian contracted by linearization, and each frequency is damped by the Gaussian's
    variance (docs/algorithm.md §4). Off: the encoding of the interval's midpoint."""


@dataclass
class ProposalConfig:
    """The shared proposal MLP and its sampling levels."""

    samples: list[int] = field(default_factory=lambda: [64, 64])
    """Samples per proposal level (all levels share one MLP)."""
    width: int = 256
    depth: int = 4


@dataclass
class NerfConfig:
    """The NeRF MLP evaluated on the last level."""

    samples: int = 32
    width: int = 1024
    depth: int = 8
    skip: int = 4
    """The encoded input is concatenated to the output of this layer."""
    bottleneck: int = 256
    view_width: int = 128


@dataclass
class AppearanceConfig:
    """Per-image appearance (exposure, white balance) learned beside the scene."""

    dim: int = 0
    """Size of each training image's latent code, fed to the colour branch (0 = off; multinerf's glo
    configs use 4). Renders use the mean code, or ``render --appearance NAME``; eval the nearest
    training camera's."""


@dataclass
class ModelConfig:
    """Fields and sampling (docs/algorithm.md §3-5)."""

    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    prop: ProposalConfig = field(default_factory=ProposalConfig)
    nerf: NerfConfig = field(default_factory=NerfConfig)
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    dilation_bias: float = 0.0025
    dilation_multiplier: float = 0.5
    anneal_slope: float = 10.0
    opaque_background: bool = True


@dataclass
class TrainConfig:
    """Optimization (docs/algorithm.md §7)."""

    max_steps: int = 250_000
    batch_rays: int | Literal["auto"] = 16384
    """Global batch, split over all ranks. auto: 16384 (the paper's) where a step of it fits the device, else
    the largest power of two that does, with lr_init and lr_final scaled by the square root of the ratio."""
    lr_init: float = 2e-3
    lr_final: float = 2e-5
    lr_delay_steps: int = 512
    lr_delay_mult: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-6
    grad_max_norm: float = 1e-3
    """Clip gradients to this global norm; 0 = no clipping."""
    interlevel_weight: float = 1.0
    distortion_weight: float = 0.01
    seed: int = 0
    checkpoint_every: int = 5000
    """Steps between checkpoints (also written at the end and on SIGINT/SIGTERM)."""
    keep_checkpoints: int = 3
    log_every: int = 100
    """Steps between lines of metrics.jsonl."""
    val_every: int = 10000
    """Steps between validation renders of a held-out view (0 = only at the end)."""
    max_nonfinite: int = 20
    """Stop after this many steps in a row with a non-finite loss or gradient."""
    device: str = "auto"
    """auto (CUDA when present), cuda, cuda:N or cpu."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """MLP precision: auto = bf16 matmuls on CUDA (heads and compositing in fp32), fp32 on the CPU."""
    tensorboard: Literal["auto", True, False] = "auto"
    """Write loss terms, PSNR, lr, rays/s and the validation panel to RUN/tensorboard/ (auto: when the
    tensorboard package is installed)."""
    recompute_proposal: bool = True
    """Recompute the proposal MLP's activations in backward instead of keeping them: about a third
    less activation memory for a few percent more time."""
    refine_cameras: bool = False
    """Learn a correction (rotation and translation, in each camera's frame) of every training camera's
    pose with the scene; render, eval and export use the refined cameras. Held-out cameras are not refined
    one by one; they follow the training cameras' common motion (README: Options for real captures)."""
    camera_lr_init: float = 6e-4
    """Learning rate of the camera corrections (decayed log-linearly to ``camera_lr_final``)."""
    camera_lr_final: float = 6e-6
    time_budget: str = ""
    """Train for this long (``2h``, ``90m``, ``1h30m`` or seconds; ``mip360 train --time``) instead of
    ``max_steps``: the step rate is measured on the first steps, then ``max_steps`` is fixed so that training,
    checkpoints and validations end within it, with the whole learning-rate schedule. The plan is stored in
    the checkpoints, so a resumed run ends at the planned step. Empty: train ``max_steps``."""
    compile: Literal["auto", True, False] = "auto"
    """torch.compile the model's forward (sampling, MLPs, compositing) and the losses; auto = on CUDA
    (faster there; slower to start by a minute or two), off on the CPU (where it is slower)."""


@dataclass
class RenderConfig:
    """Novel-view rendering."""

    chunk_rays: int | Literal["auto"] = "auto"
    """Rays rendered at once; bounds memory independently of image size. auto: 8192 on a GPU; on the CPU,
    the power of two that keeps the MLPs' largest activation near 16 MiB (2048 rays for the tiny preset, 128
    for the paper's): about twice the rays/s of chunks that do not fit the caches, at half the memory."""


@dataclass
class EvalConfig:
    """Scoring held-out views (docs/algorithm.md §8)."""

    split: Literal["test", "train"] = "test"
    quantize: bool = True
    """Round renders to 8 bits before scoring, as the published numbers are (multinerf's eval)."""
    lpips: Literal["auto", True, False] = "auto"
    """LPIPS: auto = when the lpips package and the backbone's weights are there (said once otherwise);
    true = an error without them."""
    lpips_net: Literal["alex", "vgg"] = "alex"
    """The LPIPS backbone: alex (the paper's tables) or vgg."""


@dataclass
class Config:
    """Every stage's options. ``mip360 <stage> --help`` lists the overrides."""

    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Short names users of the earlier port know, mapped to their place in the schema.
ALIASES: dict[str, str] = {
    "ratio": "data.ratio",
    "frame_interval": "data.frame_interval",
    "test_every": "data.test_every",
}



def _preset_dir() -> Path:
    """The folder of the presets: the installed package ``mip360cli.configs`` (the repository's
    ``configs/``, mapped into the package by pyproject.toml), or ``configs/`` beside the package
    in a source checkout run without installing it (``PYTHONPATH=.``)."""
    try:
        return Path(os.fspath(importlib.resources.files("mip360cli.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = _preset_dir()


# ----------------------------------------------------------------------------- schema walking


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def dotted_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """All leaf keys of the schema, dotted (``train.lr_init``)."""
    keys = []
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += dotted_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _suggest(key: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
    if not close:
        # Try the last component alone against leaves (``lr_int`` -> ``train.lr_init``).
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.7)]
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, Sequence):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted."""

    def bad() -> UserError:
        return UserError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r}")

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # the first alternative that takes the value
        for alternative in typing.get_args(tp):
            try:
                return _convert(value, alternative, key, where)
            except UserError:
                pass
        raise bad()
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad()
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad()
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, str):  # YAML 1.1 reads "1e9" as a string
            try:
                value = float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad()
    if tp is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad()
    raise TypeError(f"unsupported config type {tp} for {key}")  # a schema bug, not user input


def _build(cls: type, data: dict, where: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, validating every key."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: '{prefix.rstrip('.') or 'top level'}' must be a mapping of keys, "
                        f"got {data!r}")
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in types_:
            sections = {k.rsplit(".", i)[0] for k in dotted_keys() for i in (1, 2) if k.count(".") >= i}
            raise UserError(f"{where}: unknown key '{key}'{_suggest(key, [*sections, *dotted_keys()])}")
        tp = types_[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, where, f"{key}.")
        else:
            kwargs[name] = _convert(value, tp, key, where)
    return cls(**kwargs)


# ----------------------------------------------------------------------------- loading


CONFIG_LIMIT = 1 << 20  # a config is a few KiB


def _read_yaml(path: Path) -> dict:
    presets = f"give a YAML file or a preset name ({', '.join(preset_names())})"
    if not path.exists():
        raise UserError(f"config file {path} does not exist", hint=presets)
    if path.is_dir():
        raise UserError(f"config {path} is a folder, not a YAML file", hint=presets)
    text = read_text_bounded(path, "config file", CONFIG_LIMIT)  # not a device, a FIFO or a huge file
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise UserError(f"{where}: malformed YAML: {problem}",
                        hint="check the indentation and the 'key: value' syntax on that line") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of sections, got {type(data).__name__}")
    return data


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a preset in ``configs/`` (``tiny``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    preset = CONFIG_DIR / f"{p}.yaml"
    if preset.exists():
        return preset
    raise UserError(f"no config file or preset named '{name_or_path}'",
                    hint=f"presets: {', '.join(preset_names())}; or give a path to a YAML file")


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _resolve_base(path: Path, base: str) -> Path:
    """The file a config's ``base:`` names: a path relative to the config's folder (or absolute),
    else a preset name (``default``, ``tiny.yaml``)."""
    given = Path(base)
    local = given if given.is_absolute() else path.parent / given
    if local.exists():
        return local.resolve()
    preset = CONFIG_DIR / (base if given.suffix in (".yaml", ".yml") else f"{base}.yaml")
    if not given.is_absolute() and given.name == base and preset.exists():
        return preset.resolve()
    raise UserError(f"{path}: base '{base}' is neither a file (looked for {local}) nor a preset",
                    hint=f"presets: {', '.join(preset_names())}; a relative path is taken from the config's folder")


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = (), root: Path | None = None,
                     outside_base: str = "notice") -> dict:
    """A config file merged over its ``base:`` chain.

    A base must lie in the first file's folder (or below) or be a preset. One outside:
    ``outside_base="notice"`` reads it and says so; ``"error"`` refuses it (a run's
    config.yaml, which mip360 writes without a base, must not reach other files).
    """
    given, path = path, path.resolve()
    root = root or path.parent
    if path in seen:
        raise UserError(f"{path}: 'base:' files form a cycle: " + " -> ".join(str(s) for s in seen + (path,)))
    data = _read_yaml(given)  # messages name the file as given, not what a link points to
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise UserError(f"{path}: 'base' must name a YAML file or a preset, got {base!r}",
                        hint=f"e.g. base: default.yaml (presets: {', '.join(preset_names())})")
    base_path = _resolve_base(path, base)
    if not (base_path.is_relative_to(root) or base_path.is_relative_to(CONFIG_DIR.resolve())):
        if outside_base == "error":
            raise UserError(f"{path}: base '{base}' ({base_path}) is outside {root}; mip360 does not follow it "
                            "here", hint="a run's config.yaml is written without a base: restore it from the "
                                         "run's checkpoint or train the run again")
        from .core.progress import info

        info(f"config {path} takes its base from {base_path}, outside {root}")
    return _deep_merge(_load_yaml_chain(base_path, seen + (path,), root, outside_base), data)


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.lr_init=1e-3'`` -> ``('train.lr_init', 0.001)``; aliases expanded."""
    if "=" not in text:
        raise UserError(f"cannot read override '{text}': expected key=value, e.g. train.lr_init=1e-3")
    key, _, raw = text.partition("=")
    key = ALIASES.get(key.strip(), key.strip())
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def convert_override(key: str, value: Any, where: str = "override") -> Any:
    """Check one dotted key and its value against the schema: the value converted, or a UserError
    with "did you mean" for an unknown key and the expected type for a wrong value."""
    known = dotted_keys()
    if key not in known:
        raise UserError(f"{where}: unknown key '{key}'{_suggest(key, known)}")
    cls: Any = Config
    *sections, leaf = key.split(".")
    for name in sections:
        cls = _field_types(cls)[name]
    return _convert(value, _field_types(cls)[leaf], key, where)


RENDER_ALIASES_HELP = ("Aliases of the earlier port: ratio=R, vis_depth_map=true (mean depth), "
                       "vis_median_depth=true (median depth); or render.chunk_rays=N|auto.")


@dataclass
class RenderArgs:
    """What ``key=value`` arguments of a command that renders a run ask for."""

    ratio: float | None = None
    """Image scale against the original photos; None = the training ratio."""
    depth: str | None = None
    """none | mean | median, from the earlier port's vis_depth_map / vis_median_depth; None = not said."""
    render: dict[str, Any] = field(default_factory=dict)
    """``render.*`` keys and their values."""


def parse_render_args(overrides: Sequence[str], ratio: float | None = None, depth: str | None = None,
                      command: str = "render") -> RenderArgs:
    """``key=value`` arguments of render, eval and export: ``render.*`` config keys, ``ratio=R``, and (render
    only) the earlier port's ``vis_depth_map=true`` (mean depth) and ``vis_median_depth=true`` (median depth);
    either set to false (and neither to true) renders no depth. Flags given (``ratio``, ``depth``) win."""
    render, flags = {}, {}
    for text in overrides:
        key, value = parse_override(text)
        if key == "data.ratio":
            ratio = convert_override(key, value, "render option") if ratio is None else ratio
        elif key in ("vis_depth_map", "vis_median_depth"):
            if command != "render":
                raise UserError(f"{command} takes no vis_depth_map / vis_median_depth",
                                hint="they are options of render")
            if not isinstance(value, bool):
                raise UserError(f"render option '{text}': {key} must be true or false")
            flags[key] = value
        elif key.startswith("render."):
            render[key.removeprefix("render.")] = convert_override(key, value, "render option")
        else:
            raise UserError(f"unknown render option '{text}'", hint=RENDER_ALIASES_HELP)
    if depth is None and flags:
        wanted = [("mean" if k == "vis_depth_map" else "median") for k, v in flags.items() if v]
        depth = wanted[-1] if wanted else "none"
    if ratio is not None and not 0 < ratio <= 4:
        raise UserError(f"--ratio {ratio}: must be in (0, 4] (a scale against the original photos)")
    section = dataclasses.replace(RenderConfig(), **render)
    check_ranges(dataclasses.replace(Config(), render=section))
    return RenderArgs(ratio, depth, render)


def _set_dotted(tree: dict, key: str, value: Any, where: str) -> None:
    known = dotted_keys()
    if key not in known:
        raise UserError(f"{where}: unknown key '{key}'{_suggest(key, known)}")
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:  # the file was validated first, so sections are mappings here
        if not isinstance(node.get(p), dict):  # absent, or an empty section ("model:")
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def explicit_keys(overrides: Sequence[str] = (), values: dict[str, Any] | None = None) -> set[str]:
    """The dotted keys a command line sets: its ``key=value`` overrides and the flags given (not None)."""
    keys = {parse_override(text)[0] for text in overrides}
    keys |= {ALIASES.get(k, k) for k, v in (values or {}).items() if v is not None}
    return keys


def _budget_ok(value: str) -> bool:
    if value in ("", None):
        return True
    try:
        return 10 <= parse_duration(value) <= 365 * 86400
    except ValueError:
        return False


def load_config(config: str | Path | None = None, overrides: Sequence[str] = (),
                values: dict[str, Any] | None = None, outside_base: str = "notice") -> Config:
    """Load the schema defaults, then ``config`` (file or preset), then overrides.

    Args:
        config: a YAML path or a preset name; None = the schema defaults.
        overrides: ``key=value`` strings (dotted keys or aliases).
        values: dotted keys set by command-line flags; None values are ignored.
        outside_base: a ``base:`` outside the config's folder (not a preset) is read with a
            notice ("notice") or refused ("error").
    """
    tree: dict = {}
    where = "config"
    if config is not None:
        path = resolve_config_path(config)
        tree = _load_yaml_chain(path, outside_base=outside_base)
        where = str(path)
    # Validate the file on its own first, so its errors name the file.
    _build(Config, tree, where)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value, "override")
    for key, value in (values or {}).items():
        if value is not None:
            _set_dotted(tree, ALIASES.get(key, key), value, "option")
    cfg = _build(Config, tree, "override" if overrides or values else where)
    check_ranges(cfg)
    return cfg


def check_ranges(cfg: Config) -> None:
    """Range checks that types alone cannot express: one UserError naming the key and the value."""
    d, c = cfg.data, cfg.cache
    checks = [
        (0 < d.ratio <= 1, "data.ratio must be in (0, 1]", d.ratio),
        (d.frame_interval >= 1, "data.frame_interval must be >= 1", d.frame_interval),
        (d.test_every >= 0, "data.test_every must be >= 0 (0 = no hold-out)", d.test_every),
        (d.easymocap_frame >= 0, "data.easymocap_frame must be >= 0", d.easymocap_frame),
        (len(d.alpha_background) == 3 and all(0 <= x <= 1 for x in d.alpha_background),
         "data.alpha_background must be 3 numbers in [0, 1] (RGB)", d.alpha_background),
        (0 < d.near < d.far < float("inf"), "data.near must be > 0 and < data.far, and data.far finite",
         (d.near, d.far)),
        (1024 <= c.bucket_rays <= 1 << 30, "cache.bucket_rays must be from 1024 to 2^30", c.bucket_rays),
        (c.memory_mb >= 16, "cache.memory_mb must be >= 16", c.memory_mb),
        (1 <= c.workers <= 256, "cache.workers must be from 1 to 256", c.workers),
        (cfg.train.batch_rays == "auto" or cfg.train.batch_rays >= 1, "train.batch_rays must be >= 1 or auto",
         cfg.train.batch_rays),
        (cfg.train.max_steps >= 1, "train.max_steps must be >= 1", cfg.train.max_steps),
        (cfg.train.checkpoint_every >= 1, "train.checkpoint_every must be >= 1", cfg.train.checkpoint_every),
        (cfg.train.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1", cfg.train.keep_checkpoints),
        (cfg.train.log_every >= 1, "train.log_every must be >= 1", cfg.train.log_every),
        (cfg.train.val_every >= 0, "train.val_every must be >= 0", cfg.train.val_every),
        (cfg.train.max_nonfinite >= 1, "train.max_nonfinite must be >= 1", cfg.train.max_nonfinite),
        (cfg.train.lr_init > 0 and cfg.train.lr_final > 0, "train.lr_init and lr_final must be > 0",
         (cfg.train.lr_init, cfg.train.lr_final)),
        (0 <= cfg.train.adam_beta1 < 1 and 0 <= cfg.train.adam_beta2 < 1,
         "train.adam_beta1 and adam_beta2 must be in [0, 1)", (cfg.train.adam_beta1, cfg.train.adam_beta2)),
        (cfg.train.adam_eps > 0, "train.adam_eps must be > 0", cfg.train.adam_eps),
        (cfg.train.lr_delay_steps >= 0 and 0 < cfg.train.lr_delay_mult <= 1,
         "train.lr_delay_steps must be >= 0 and train.lr_delay_mult in (0, 1]",
         (cfg.train.lr_delay_steps, cfg.train.lr_delay_mult)),
        (cfg.train.interlevel_weight >= 0 and cfg.train.distortion_weight >= 0,
         "train.interlevel_weight and distortion_weight must be >= 0",
         (cfg.train.interlevel_weight, cfg.train.distortion_weight)),
        (cfg.train.batch_rays == "auto" or cfg.train.batch_rays <= 1 << 24,
         f"train.batch_rays must be at most {1 << 24:,}", cfg.train.batch_rays),
        (cfg.train.max_steps <= 10**9, "train.max_steps must be at most 1e9", cfg.train.max_steps),
        (min([*cfg.model.prop.samples, cfg.model.nerf.samples]) >= 2, "every level needs >= 2 samples",
         [*cfg.model.prop.samples, cfg.model.nerf.samples]),
        (0 <= cfg.model.nerf.skip < cfg.model.nerf.depth - 1, "model.nerf.skip must be in [0, depth - 1)",
         cfg.model.nerf.skip),
        (len(cfg.model.prop.samples) >= 1, "model.prop.samples needs at least one level",
         cfg.model.prop.samples),
        (cfg.render.chunk_rays == "auto" or cfg.render.chunk_rays >= 1, "render.chunk_rays must be >= 1 or auto",
         cfg.render.chunk_rays),
        (_budget_ok(cfg.train.time_budget), "train.time_budget must be a duration from 10 s to 365 days (2h, 90m, "
         "1h30m, or seconds), or empty for none", cfg.train.time_budget),
    ]
    m = cfg.model
    for key, value in (("model.nerf.width", m.nerf.width), ("model.nerf.depth", m.nerf.depth),
                       ("model.nerf.bottleneck", m.nerf.bottleneck), ("model.nerf.view_width", m.nerf.view_width),
                       ("model.prop.width", m.prop.width), ("model.prop.depth", m.prop.depth)):
        checks.append((value >= 1, f"{key} must be >= 1 (a layer of no units learns nothing)", value))
    for key, value in (("model.encoding.point_max_freq", m.encoding.point_max_freq),
                       ("model.encoding.view_max_freq", m.encoding.view_max_freq)):
        checks.append((value >= 0, f"{key} must be >= 0", value))
    checks += [
        (m.dilation_bias >= 0 and m.dilation_multiplier >= 0, "model.dilation_bias and dilation_multiplier must "
         "be >= 0", (m.dilation_bias, m.dilation_multiplier)),
        (cfg.train.grad_max_norm >= 0, "train.grad_max_norm must be >= 0 (0 = no clipping)", cfg.train.grad_max_norm),
        (0 <= m.appearance.dim <= 1024, "model.appearance.dim must be from 0 (off) to 1024", m.appearance.dim),
        (cfg.train.camera_lr_init > 0 and cfg.train.camera_lr_final > 0,
         "train.camera_lr_init and camera_lr_final must be > 0", (cfg.train.camera_lr_init, cfg.train.camera_lr_final)),
    ]
    for ok, message, value in checks:
        if not ok:
            raise UserError(f"{message}, got {value!r}")


# ----------------------------------------------------------------------------- saving


CONFIG_HEADER = "# resolved mip360 config"
"""The first line of every config mip360 writes (a run's config.yaml): how a run folder is recognized."""


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_hash(section: Any) -> str:
    """A short stable hash of a config (section), for fingerprints and reports."""
    blob = json.dumps(config_to_dict(section), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_from_dict(data: dict, where: str = "config") -> Config:
    """Rebuild a Config from :func:`config_to_dict` output (e.g. a run's config.yaml)."""
    return _build(Config, data, where)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    text = f"{CONFIG_HEADER}: every value this stage used\n"
    text += yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    atomic_write_text(path, text)
