"""Training on the example scene: quality, DDP equivalence, exact resume, NaN handling, bad options."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mip360cli.config import CacheConfig, DataConfig, load_config
from mip360cli.data.cache import RayCache, build_cache
from mip360cli.data.example import make_example
from mip360cli.core.errors import UserError
from mip360cli.model.model import Mip360
from mip360cli.runs import checkpoints as ckpt
from mip360cli.train.batches import RayBatcher
from mip360cli.runs.views import render_image
from mip360cli.train.loop import train


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """24 views of 32x24 (21 train, 3 held out), buckets of 2048 rays."""
    root = tmp_path_factory.mktemp("train")
    make_example(root / "scene", "colmap", 24, 32, 24)
    return build_cache(root / "scene", DataConfig(), CacheConfig(bucket_rays=2048), out=root / "cache.h5").path


def cfg(*overrides):
    return load_config("tiny", ["train.val_every=0", "train.log_every=5", *overrides])


def params_of(path: Path) -> dict:
    return ckpt.load_checkpoint(path)["model"]


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_batcher_seek_and_epochs(cache):
    with RayCache(cache) as c:
        a = RayBatcher(c, 0, 2, 300, seed=1)
        for _ in range(7):
            a.next()
        b = RayBatcher(c, 0, 2, 300, seed=1)
        b.seek(7)
        for x, y in zip(a.next(), b.next()):
            np.testing.assert_array_equal(x, y)
        # one epoch of the two shards together holds every ray exactly once
        keys = []
        for shard in (0, 1):
            r = RayBatcher(c, shard, 2, 1, seed=1)
            n = int(sum(c.bucket_size(int(bk)) for bk in r._buckets(0)))
            r.batch = n
            cam, u, v, _ = r.next()
            keys.append(cam.astype(np.int64) * 10_000 + v * 100 + u)
        allk = np.concatenate(keys)
        assert len(allk) == c.n_rays == len(np.unique(allk))


def test_prefetcher_yields_the_batchers_stream_and_their_errors(cache):
    from mip360cli.train.batches import Prefetcher

    with RayCache(cache) as c:
        plain = [RayBatcher(c, s, 2, 300, seed=1) for s in (0, 1)]
        ahead = [RayBatcher(c, s, 2, 300, seed=1) for s in (0, 1)]
        pre = Prefetcher(ahead, torch.device("cpu"), depth=3)
        try:
            for _ in range(25):  # several epochs of both shards
                cam, u, v, rgb, pos = pre.next()
                want = [np.concatenate(x) for x in zip(*(b.next() for b in plain))]
                for got, w in zip((cam, u, v, rgb), want):
                    np.testing.assert_array_equal(got.numpy(), w)
                assert cam.dtype == torch.int64 and pos == [b.position() for b in plain]
        finally:
            pre.close()
        broken = RayBatcher(c, 0, 1, 300, seed=1)
        broken.next = lambda: (_ for _ in ()).throw(OSError("disk gone"))
        pre = Prefetcher([broken], torch.device("cpu"))
        with pytest.raises(OSError, match="disk gone"):
            pre.next()
        pre.close()


def _psnr(a, b):
    return -10 * np.log10(((a - b) ** 2).mean())


def test_training_beats_the_mean_color_by_6db(trained_example):
    """The tiny preset on the example scene (the shared run: 24 views of 64x48, 600 steps of 512 rays)."""
    run, cache = trained_example["run"], trained_example["cache"]
    with RayCache(cache) as c:
        rgb = np.concatenate([c.read_bucket(b)[3] for b in range(c.n_buckets)]) / 255.0
        mean_color = rgb.mean(0)
        state = params_of(ckpt.list_checkpoints(run)[-1][1])
        config = load_config(run / "config.yaml")
        model = Mip360.from_config(config.model, config.data)
        model.load_state_dict(state)
        cams = c.cameras
        base, ours = [], []
        for k, i in enumerate(c.test):
            gt = c.test_image(k) / 255.0
            out = render_image(model, cams.K[i], cams.c2w[i], cams.dist[i], int(cams.width[i]), int(cams.height[i]),
                               4096, torch.device("cpu"))
            ours.append(_psnr(np.clip(out["rgb"], 0, 1), gt))
            base.append(_psnr(np.broadcast_to(mean_color, gt.shape), gt))
    print(f"\nheld-out PSNR {np.mean(ours):.2f} dB vs mean color {np.mean(base):.2f} dB")
    assert np.mean(ours) >= np.mean(base) + 6.0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == list(range(100, 601, 100))
    assert (run / "val" / "step_0000600.png").exists()
    assert (run / "cameras.json").exists() and (run / "config.yaml").exists()


def _mip360(*args, env=None):
    return [sys.executable, "-m", "mip360cli", *map(str, args)]


def test_ddp_two_processes_equal_one_process(cache, tmp_path):
    """2 gloo processes vs one process reading the same two data shards, same global batch and seed."""
    steps = ["train.max_steps=4", "train.batch_rays=256", "train.checkpoint_every=4", "train.lr_delay_steps=0"]
    # validation at step 3 (rank 0 only), between logs: every rank still reads its figures at the same steps
    r = subprocess.run(_mip360("train", cache, "--gpus", 2, "--run", tmp_path / "ddp", "--config", "tiny",
                               "train.val_every=3", *steps), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes does on this 2-core machine
    try:
        train(cache, tmp_path / "one", cfg(*steps), data_shards=2)
    finally:
        torch.set_num_threads(threads)
    train(cache, tmp_path / "wrong", cfg(*steps), data_shards=1)  # another batch: the scale of a real mismatch
    a = params_of(tmp_path / "ddp" / "checkpoints" / "step_0000004.pt")
    b = params_of(tmp_path / "one" / "checkpoints" / "step_0000004.pt")
    c = params_of(tmp_path / "wrong" / "checkpoints" / "step_0000004.pt")
    flat = lambda x, y: torch.cat([(x[k].float() - y[k].float()).abs().flatten() for k in x])  # noqa: E731
    same, wrong, moved = flat(a, b), flat(a, c), flat(a, params_of_init(cache))
    print(f"\nDDP vs one process after 4 steps: max |dp| {same.max():.2e}, "
          f"{(same > 1e-5).float().mean():.2%} of parameters differ by > 1e-5; "
          f"with a different batch: max {wrong.max():.2e}, {(wrong > 1e-5).float().mean():.2%}; "
          f"movement max {moved.max():.2e}; mean |dp| / mean movement: {same.mean() / moved.mean():.2e} "
          f"(different batch: {wrong.mean() / moved.mean():.2e})")
    # Tolerance: float reduction order differs (gloo all-reduce vs one sum). Adam turns a gradient that
    # is ~0 into a step of up to +-lr, so a few near-zero-gradient weights may differ by ~lr/10; a real
    # mismatch (other rays, no all-reduce) moves most weights differently by ~lr.
    assert moved.max() > 1e-2
    assert same.max() < 5e-3 and same.mean() < 0.01 * moved.mean()
    assert wrong.mean() > 0.1 * moved.mean()  # the check can tell a real mismatch apart


def params_of_init(cache):
    c = load_config("tiny")
    torch.manual_seed(c.train.seed)
    return Mip360.from_config(c.model, c.data).state_dict()


def test_sigterm_then_resume_equals_uninterrupted(cache, tmp_path):
    args = ["--config", "tiny", "train.max_steps=40", "train.batch_rays=128", "train.log_every=1",
            "train.val_every=0", "train.checkpoint_every=1000"]
    run = tmp_path / "killed"
    proc = subprocess.Popen(_mip360("train", cache, "--run", run, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    assert "interrupted at step" in err
    stopped = ckpt.list_checkpoints(run)[-1][0]
    assert 8 <= stopped < 40
    r = subprocess.run(_mip360("train", cache, "--run", run, *args), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"resuming {run} from step {stopped}" in r.stderr, r.stderr
    r = subprocess.run(_mip360("train", cache, "--run", tmp_path / "straight", *args), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a = params_of(ckpt.list_checkpoints(run)[-1][1])
    b = params_of(ckpt.list_checkpoints(tmp_path / "straight")[-1][1])
    assert max_diff(a, b) == 0.0
    steps = [m["step"] for m in map(json.loads, metrics.read_text().splitlines()) if "loss" in m]
    assert steps == list(range(1, 41))  # the replayed part is not logged twice


def test_nonfinite_steps_are_skipped_and_counted(cache, tmp_path, monkeypatch, capsys):
    from mip360cli.model import losses

    real = losses.charbonnier
    calls = {"n": 0}

    def flaky(rgb, gt, eps=1e-3):
        calls["n"] += 1
        value = real(rgb, gt, eps)
        return value * float("nan") if calls["n"] in (3, 4) else value

    monkeypatch.setattr(losses, "charbonnier", flaky)
    summary = train(cache, tmp_path / "nan", cfg("train.max_steps=8", "train.batch_rays=128"))
    assert summary.step == 8 and summary.nonfinite_steps == 2
    assert "non-finite loss or gradient, step skipped" in capsys.readouterr().err
    state = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "nan")[-1][1])
    assert all(torch.isfinite(v).all() for v in state["model"].values())

    # always NaN: stops after max_nonfinite in a row, the earlier checkpoint intact
    monkeypatch.setattr(losses, "charbonnier", lambda rgb, gt, eps=1e-3: real(rgb, gt, eps) * float("nan"))
    before = ckpt.list_checkpoints(tmp_path / "nan")
    with pytest.raises(UserError, match="training diverged: 3 steps in a row"):
        train(cache, tmp_path / "nan", cfg("train.max_steps=20", "train.batch_rays=128", "train.max_nonfinite=3"))
    assert ckpt.list_checkpoints(tmp_path / "nan") == before


def test_checkpoints_keep_the_last_k(cache, tmp_path):
    train(cache, tmp_path / "k", cfg("train.max_steps=5", "train.batch_rays=64", "train.checkpoint_every=1",
                                     "train.keep_checkpoints=2"))
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "k")] == [4, 5]
    assert not [p for p in (tmp_path / "k" / "checkpoints").iterdir() if "partial" in p.name]


def test_resume_refuses_a_changed_model(cache, tmp_path):
    train(cache, tmp_path / "r", cfg("train.max_steps=2", "train.batch_rays=64"))
    with pytest.raises(UserError, match="model.nerf.width") as e:
        train(cache, tmp_path / "r", cfg("train.max_steps=4", "train.batch_rays=64", "model.nerf.width=32"))
    assert "--restart" in str(e.value)
    s = train(cache, tmp_path / "r", cfg("train.max_steps=4", "train.batch_rays=64", "model.nerf.width=32"),
              restart=True)
    assert s.resumed_from == 0 and s.step == 4
    s = train(cache, tmp_path / "r", cfg("train.max_steps=6", "train.batch_rays=64", "model.nerf.width=32"))
    assert s.resumed_from == 4  # max_steps may change


def test_bad_training_options(cache, tmp_path, capsys):
    from mip360cli.cli import main

    def fail(*argv):
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code != 0 and "Traceback" not in err
        return err

    if not torch.cuda.is_available():
        assert "no CUDA GPU" in fail("train", cache, "--run", tmp_path / "x", "--device", "cuda")
    assert "does not exist" in fail("train", tmp_path / "nope.h5", "--run", tmp_path / "x")
    assert "must be >= 2 samples" in fail("train", cache, "--run", tmp_path / "x", "model.nerf.samples=1") \
        or "every level needs >= 2 samples" in fail("train", cache, "--run", tmp_path / "x", "model.nerf.samples=1")
    with pytest.raises(UserError, match="does not split evenly over 2"):
        train(cache, tmp_path / "y", cfg("train.batch_rays=33", "train.max_steps=1"), data_shards=2)
    with RayCache(cache) as c:
        with pytest.raises(UserError, match="fewer than the 64 processes"):
            RayBatcher(c, 0, 64, 8, 0)


def test_a_failing_process_stops_the_distributed_run(cache, tmp_path):
    """A rank that fails (here: a batch that cannot be split) ends the whole run with a message, no hang."""
    r = subprocess.run(_mip360("train", cache, "--gpus", 2, "--run", tmp_path / "fail", "--config", "tiny",
                               "train.batch_rays=33"), capture_output=True, text=True, timeout=240)
    assert r.returncode == 1
    assert "does not split evenly over 2 processes" in r.stderr
    assert "training stopped: a process exited with code" in r.stderr


def test_gradient_clipping_acts_on_the_step(cache, tmp_path):
    """Clipping to a tiny global norm leaves Adam only eps-sized steps: the parameters barely move."""
    init = params_of_init(cache)

    def movement(max_norm: float) -> float:
        run = tmp_path / f"clip{max_norm}"
        train(cache, run, cfg("train.max_steps=1", f"train.grad_max_norm={max_norm}", "train.lr_delay_steps=0"))
        after = params_of(ckpt.list_checkpoints(run)[-1][1])
        return sum(float((after[k] - init[k]).abs().sum()) for k in init)

    free, clipped = movement(0.0), movement(1e-12)
    # Adam's first step is lr * g / (|g| + eps): about lr per weight unclipped, about lr * 1e-6 clipped to 1e-12
    assert clipped < 1e-3 * free, (clipped, free)
    assert movement(0.05) == pytest.approx(free, rel=0.2)  # the tiny preset's clip rarely binds on step one


def test_a_compiled_run_does_not_recompile_resumes_uncompiled_and_renders(cache, tmp_path, monkeypatch):
    """train.compile=true on the CPU (inductor with gcc): nothing recompiles after the first step,
    checkpoints hold the plain modules' keys, compiled rendering gives the eager images."""
    import torch._dynamo.utils

    from mip360cli.cli import main
    from mip360cli.runs.load import load_run
    from mip360cli.train import loop

    graphs = []  # graphs compiled so far, at the start of each step (jitter is drawn once per step)
    real_jitter = loop.jitter_for
    monkeypatch.setattr(loop, "jitter_for", lambda *a, **k: (
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"]), real_jitter(*a, **k))[1])
    run = tmp_path / "compiled"
    train(cache, run, cfg("train.max_steps=5", "train.compile=true", "train.checkpoint_every=1",
                          "train.log_every=2", "train.lr_delay_steps=0"))
    assert len(graphs) == 5 and graphs[1] > graphs[0]  # the first step compiles ...
    assert graphs[1:] == [graphs[1]] * 4, graphs  # ... and no later one: train_frac, lr and steps are not constants
    state = ckpt.load_checkpoint(ckpt.list_checkpoints(run)[-1][1])["model"]
    assert not [k for k in state if "_orig_mod" in k] and set(state) == set(params_of_init(cache))
    monkeypatch.undo()

    loaded = load_run(run, device=torch.device("cpu"))
    assert loaded.model.compiled  # rendered as it was trained
    eager = Mip360.from_config(loaded.cfg.model, loaded.cfg.data)
    eager.load_state_dict(loaded.model.state_dict())
    cams = loaded.cameras
    view = (cams.K[0], cams.c2w[0], None, int(cams.width[0]), int(cams.height[0]))
    a = render_image(loaded.model, *view, 500, torch.device("cpu"))  # 768 rays: chunks of 500 and 268 + 232 padding
    b = render_image(eager, *view, 500, torch.device("cpu"))
    for k in a:
        assert np.abs(a[k] - b[k]).max() < 1e-4, k

    summary = train(cache, run, cfg("train.max_steps=6", "train.compile=false", "train.checkpoint_every=1"))
    assert summary.resumed_from == 5 and summary.step == 6
    summary = train(cache, run, cfg("train.max_steps=7", "train.compile=true", "train.checkpoint_every=1"))
    assert summary.resumed_from == 6  # and on again
    assert main(["render", str(run), "--frames", "1", "--no-video", "--device", "cpu"]) == 0
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    # a checkpoint written by the earlier version, with the compile wrappers' keys, still loads
    step, last = ckpt.list_checkpoints(run)[-1]
    old = ckpt.load_checkpoint(last)
    old["model"] = {k.replace("proposal.", "proposal._orig_mod.").replace("nerf.", "nerf._orig_mod."): v
                    for k, v in old["model"].items()}
    torch.save(old, last)
    assert main(["eval", str(run), "--device", "cpu"]) == 0


def test_a_checkpoint_of_the_earlier_layer_layout_is_refused_for_resume_but_evaluates(cache, tmp_path):
    from test_model import _old_layout_state

    from mip360cli.cli import main

    run = tmp_path / "old"
    train(cache, run, cfg("train.max_steps=1"))
    step, last = ckpt.list_checkpoints(run)[-1]
    state = ckpt.load_checkpoint(last)
    state["model"] = _old_layout_state(load_config("tiny").model)  # as the earlier version wrote it
    torch.save(state, last)
    with pytest.raises(UserError, match="written by an earlier mip360 whose layers had other shapes"):
        train(cache, run, cfg("train.max_steps=2"))
    assert main(["eval", str(run), "--device", "cpu"]) == 0


def test_steps_between_logs_read_nothing_back_from_the_device(cache, tmp_path, monkeypatch):
    """No host sync in a step: values leave the device only every train.log_every steps (and at
    checkpoints). Counted on the CPU as the tensor-to-Python conversions the training thread makes."""
    from torch.overrides import TorchFunctionMode

    from mip360cli.train import loop

    reads = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "__format__", "__array__"}

    class CountReads(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in reads:
                self.calls.append(func.__name__)
            return func(*args, **(kwargs or {}))

    counter = CountReads()
    at_step: list[int] = []  # reads so far at the start of each step
    real_jitter = loop.jitter_for

    def jitter(*a, **k):
        at_step.append(len(counter.calls))
        return real_jitter(*a, **k)

    monkeypatch.setattr(loop, "jitter_for", jitter)
    with counter:
        summary = train(cache, tmp_path / "sync", cfg("train.max_steps=12", "train.log_every=6",
                                                      "train.checkpoint_every=1000", "train.batch_rays=128"))
    assert summary.step == 12 and summary.last_psnr == summary.last_psnr
    per_step = np.diff(at_step)  # reads made by steps 1..11 (step k ends with the log when k % 6 == 0)
    logged = {5}  # the step whose end is step 6
    assert all(n == 0 for i, n in enumerate(per_step) if i not in logged), (per_step, counter.calls[:20])
    assert per_step[5] > 0  # the test sees reads where there are some


def test_tensorboard_holds_the_scalars_and_the_validation_panel(cache, tmp_path):
    pytest.importorskip("tensorboard")  # in the [test] extra; train.tensorboard=auto skips it when absent
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    args = ["train.batch_rays=64", "train.log_every=5", "train.checkpoint_every=5"]
    train(cache, run, cfg("train.max_steps=10", *args))
    train(cache, run, cfg("train.max_steps=15", *args))  # resumes at 10
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for k in ("loss", "data", "interlevel", "distortion", "psnr", "lr", "rays_per_s", "nonfinite"):
        assert f"train/{k}" in tags["scalars"], tags
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15]
    logged = {json.loads(line)["step"]: json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if "loss" in line}
    for e in events.Scalars("train/loss"):
        assert e.value == pytest.approx(logged[e.step]["loss"], rel=1e-6)
    assert [e.step for e in events.Scalars("val/psnr")] == [10, 15]
    images = events.Images("val/photo_render_depth")
    assert [i.step for i in images] == [10, 15]
    assert (images[-1].width, images[-1].height) == (3 * 32, 24)  # photo | render | depth of a 32x24 view
    train(cache, tmp_path / "off", cfg("train.max_steps=1", "train.tensorboard=false"))
    assert (tmp_path / "off" / "checkpoints").is_dir() and not (tmp_path / "off" / "tensorboard").exists()
