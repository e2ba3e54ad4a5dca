"""What the GPU path does where it cannot be tried here, tested on the CPU: torch.compile failing at the first
step, bf16 only on GPUs that compute it natively, an out-of-memory error as one message, the plan printed after
the first timed steps, and a time budget that ends in time and survives a resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import run_cli

FAST = ["--config", "tiny", "train.batch_rays=64", "train.val_every=0"]


def test_a_failing_compile_falls_back_to_eager_once_with_auto_and_stops_with_true(scene_copy, capsys, tmp_path,
                                                                                 monkeypatch):
    import mip360cli.model.model as model_module
    import mip360cli.runs.load as load_module

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found (a stand-in for any compilation failure)")

    monkeypatch.setattr(load_module, "compile_enabled", lambda setting, device: setting is not False)
    monkeypatch.setattr(model_module, "COMPILE_BACKEND", broken_backend)
    scene = scene_copy("colmap")
    code, _, err = run_cli(["train", scene, "--run", tmp_path / "auto", *FAST, "train.max_steps=4"], capsys)
    assert code == 0, err
    assert err.count("torch.compile failed at the first step") == 1 and "training eagerly" in err, err
    assert "no C++ compiler" in err and "Traceback" not in err
    state = torch.load(sorted((tmp_path / "auto/checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert state["step"] == 4 and state["nonfinite_total"] == 0
    code, _, err = run_cli(["train", scene, "--run", tmp_path / "true", *FAST, "train.max_steps=4",
                            "train.compile=true"], capsys)
    assert code == 1 and "torch.compile failed at the first step" in err and "train.compile=false" in err, err
    assert not list((tmp_path / "true").glob("checkpoints/*.pt"))


@pytest.mark.parametrize("capability,precision,expected", [
    ((8, 0), "auto", torch.bfloat16), ((9, 0), "auto", torch.bfloat16), ((7, 0), "auto", None),
    ((7, 5), "auto", None), ((7, 0), "bf16", torch.bfloat16), ((9, 0), "fp32", None)])
def test_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, capability, precision, expected):
    from mip360cli.core import device as dev

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a test GPU")
    cuda = torch.device("cuda", 0)
    assert dev.mlp_dtype(precision, cuda) is expected
    line = dev.precision_line(precision, cuda)
    assert f"compute capability {capability[0]}.{capability[1]}" in line and "a test GPU" in line
    assert line.startswith("precision: bf16" if expected is not None else "precision: fp32"), line
    if capability < (8, 0) and precision == "auto":
        assert "no native bf16" in line and "train.precision=bf16 forces it" in line
    assert dev.mlp_dtype(precision, torch.device("cpu")) is None


def test_out_of_memory_is_one_message_with_the_batch_and_what_fits(scene_copy, capsys, tmp_path, monkeypatch):
    import mip360cli.train.loop as loop

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "train_step", out_of_memory)
    code, _, err = run_cli(["train", scene_copy("colmap"), "--run", tmp_path / "run", *FAST, "train.max_steps=3"],
                           capsys)
    assert code == 1 and "Traceback" not in err, err
    assert "a training step ran out of memory" in err and "train.batch_rays=64 (64 rays a process)" in err
    assert "render.chunk_rays=" in err and "would fit by the estimate" in err, err
    assert "train.batch_rays=32" in err  # half the batch at most: the one that did not fit is not offered


def test_every_run_prints_its_plan_after_the_first_timed_steps(scene_copy, capsys, tmp_path):
    code, _, err = run_cli(["train", scene_copy("colmap"), "--run", tmp_path / "run", *FAST, "train.max_steps=120"],
                           capsys)
    assert code == 0, err
    plan = next(line for line in err.splitlines() if line.startswith("plan: 120 steps"))
    assert "1,000 steps take about" in plan and "rays/s" in plan and "ending about" in plan
    assert "peak memory of the process" in plan and "precision: fp32 (the CPU)" in err


def test_a_time_budget_ends_in_time_with_the_whole_schedule_and_resumes_to_the_planned_step(scene_copy, tmp_path):
    """``--time 60s`` (tiny preset, CPU): SIGTERM half way, run again: it ends at the planned step, at lr_final,
    within 15% of 60 s in all (the budget's clock: both commands from their start)."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "mip360cli", "train", str(scene_copy("colmap")), "--run", str(run), "--config",
            "tiny", "--time", "60s", "train.val_every=0", "train.log_every=10"]
    first = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    for line in first.stderr:
        lines.append(line)
        if line.startswith("plan for the time budget of 60 s"):
            break
    first_plan = int(lines[-1].split(": ")[1].split(" steps")[0].replace(",", ""))
    time.sleep(20)
    first.send_signal(signal.SIGTERM)
    rest = first.stderr.read()
    assert first.wait(timeout=120) != 0 and "interrupted at step" in rest, rest
    second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "following the plan made for the time budget of 60 s" in second.stderr
    state = torch.load(sorted((run / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    # the plan in effect (set again from the step rate until 80% of the way, as the machine's speed changes)
    planned = state["plan"]["max_steps"]
    assert state["step"] == planned and abs(planned - first_plan) < 0.5 * first_plan, (first_plan, planned)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "lr" in r][-1]
    assert last["step"] == planned and last["lr"] == pytest.approx(state["config"]["train"]["lr_final"], rel=0.01)
    # the budget's clock: both commands from their start (setup included), as the user waits for them
    print(f"\nbudget 60 s: {planned} steps, {state['budget_seconds']:.1f} s of the budget's clock over two "
          f"processes ({state['train_seconds']:.1f} s of them in training steps)")
    assert abs(state["budget_seconds"] - 60) < 0.15 * 60, (state["budget_seconds"], state["train_seconds"])


def test_batch_auto_takes_what_fits_scales_the_rates_and_keeps_them_on_resume(scene_copy, capsys, tmp_path,
                                                                              monkeypatch):
    import mip360cli.train.loop as loop
    from mip360cli.config import load_config

    cfg = load_config("tiny")
    fixed, per_ray = loop.step_bytes(cfg, torch.device("cpu"))
    monkeypatch.setattr(loop, "available_bytes", lambda device: (fixed + per_ray * 3000) / 0.9)
    scene, run = scene_copy("colmap"), tmp_path / "run"
    args = ["train", scene, "--run", run, "--config", "tiny", "train.batch_rays=auto", "train.val_every=0",
            "train.max_steps=3"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "train.batch_rays=auto: 2,048 rays a step" in err and "sqrt(2048/16384) = 0.354" in err, err
    state = torch.load(sorted((run / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    train_cfg = state["config"]["train"]
    assert train_cfg["batch_rays"] == 2048
    assert train_cfg["lr_init"] == pytest.approx(cfg.train.lr_init * (2048 / 16384) ** 0.5)
    # resumed where more memory is free: the run keeps its batch and rates
    monkeypatch.setattr(loop, "available_bytes", lambda device: 1 << 40)
    code, _, err = run_cli([*args[:-1], "train.max_steps=5"], capsys)
    assert code == 0 and "resuming" in err and "cannot resume" not in err, err
    assert torch.load(sorted((run / "checkpoints").glob("*.pt"))[-1], weights_only=True)["config"]["train"][
        "batch_rays"] == 2048
    # where everything fits: the paper's batch, rates as given
    from mip360cli.core import distributed

    big = load_config("tiny", ["train.batch_rays=auto"])
    loop.resolve_batch(big, torch.device("cpu"), 1, tmp_path / "new", distributed.init("cpu"))
    assert big.train.batch_rays == 16384 and big.train.lr_init == cfg.train.lr_init
    assert "16,384 rays a step (the paper's; it fits)" in capsys.readouterr().err
