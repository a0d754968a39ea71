"""The `atmc` command end to end on small recipes: run folder, reliability, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from atmc_plugin.app.cli import main
from atmc_plugin.app.rundir import RunDir, load_checkpoint

RECIPES = Path(__file__).parent / "recipes"
TINY = RECIPES / "tiny_tp.toml"


def atmc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atmc_plugin", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=3600,  # a guard against a hung child, not a speed check
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    done = atmc("run", str(TINY), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def epoch_records(run: Path) -> list[dict[str, object]]:
    records = RunDir(run).read_metrics()
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_run_folder_has_everything_a_user_needs(finished_run: Path) -> None:
    for name in (
        "recipe.toml",
        "run.json",
        "metrics.jsonl",
        "checkpoints/last.pt",
        "checkpoints/dense.pt",
        "final.pt",
        "model.safetensors",
        "results.json",
        "report.md",
        "training.png",
        "accuracy_vs_size.png",
    ):
        assert (finished_run / name).is_file(), name
    assert (finished_run / "recipe.toml").read_text() == TINY.read_text()
    records = RunDir(finished_run).read_metrics()
    stages = [r["stage"] for r in records if r["kind"] == "epoch"]
    assert stages == ["pretrain"] * 2 + ["compress"] * 3 + ["finetune"] * 2
    assert records[-1]["kind"] == "final"
    results = json.loads((finished_run / "results.json").read_text())
    assert results["size"]["params"] < results["size"]["dense_params"]  # channels removed
    assert 0 < results["size"]["size_ratio"] <= 0.2 * 4 / 32 + 1e-9
    assert set(results["evaluation"]) == {"dense", "compressed"}
    report = (finished_run / "report.md").read_text()
    assert "worst case" in report and "storage-honest" in report
    payload = torch.load(finished_run / "final.pt", weights_only=True)
    assert payload["format"] == "atmc-run-final"


def test_eval_and_report_commands(finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = json.loads((finished_run / "results.json").read_text())
    assert main(["eval", str(finished_run / "final.pt"), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["clean"] == results["evaluation"]["compressed"]["clean"]
    (finished_run / "report.md").unlink()
    assert main(["report", str(finished_run)]) == 0
    assert (finished_run / "report.md").is_file()


def test_resume_after_kill_matches_uninterrupted_run(finished_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "atmc_plugin", "run", str(TINY), "--out", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 1800  # hang guard
    # Kill in the middle of the compress stage, after the first pruning step.
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count('"compress"') >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=3600)  # hang guard, not a speed check
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "results.json").exists()
    resumed = atmc("run", str(TINY), "--out", str(out), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert epoch_records(out) == epoch_records(finished_run)
    ours = json.loads((out / "results.json").read_text())
    theirs = json.loads((finished_run / "results.json").read_text())
    assert ours["evaluation"] == theirs["evaluation"]
    assert ours["size"] == theirs["size"]


def test_existing_run_is_not_overwritten(finished_run: Path) -> None:
    before = (finished_run / "metrics.jsonl").read_bytes()
    assert main(["run", str(TINY), "--out", str(finished_run)]) == 2
    assert (finished_run / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("content", [b"not a checkpoint", b"", None])
def test_corrupt_or_foreign_checkpoint_is_refused_and_kept(
    tmp_path: Path, content: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / ".atmc-run").write_text("{}")  # one of our run folders, with a bad checkpoint
    last = out / "checkpoints" / "last.pt"
    if content is None:
        torch.save({"model": {}}, last)  # a foreign, weights-only-readable file
    else:
        last.write_bytes(content)
    before = last.read_bytes()
    assert main(["run", str(TINY), "--out", str(out), "--resume"]) == 2
    assert last.read_bytes() == before
    assert "not modified" in caplog.text


def test_checkpoint_of_another_recipe_is_refused(finished_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text(TINY.read_text().replace("seed = 3", "seed = 4"))
    from atmc_plugin.app.recipe import load_recipe
    from atmc_plugin.errors import InputError

    with pytest.raises(InputError, match="different recipe") as info:
        load_checkpoint(finished_run / "checkpoints" / "last.pt", load_recipe(other))
    dense = finished_run / "checkpoints" / "dense.pt"
    assert f"keeps this run's pre-training with [model] weights = '{dense}'" in str(info.value)


def test_resume_without_checkpoint_and_unwritable_folder(tmp_path: Path) -> None:
    assert main(["run", str(TINY), "--out", str(tmp_path / "fresh"), "--resume"]) == 2
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", str(TINY), "--out", str(blocker / "sub")]) == 2
    assert not (blocker.parent / "sub").exists()


def test_bad_recipe_exit_code_and_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nname='digits_cnn'\n[train]\nlr='fast'\n")
    done = atmc("run", str(bad), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "[train] lr = 'fast'" in done.stderr and str(bad) in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(tmp_path: Path) -> None:
    assert main(["run", str(TINY), "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
    assert not (tmp_path / "o").exists()


def test_diverging_run_stops_with_a_clear_message(tmp_path: Path) -> None:
    recipe = tmp_path / "diverge.toml"
    text = TINY.read_text().replace("lr = 0.05", "lr = 0.05\nclean_weight = 1.0")
    # Pre-training is fine; the compress stage's lr (lr / 2) is not: use a huge lr throughout
    # and one good pre-training epoch is impossible, so divergence is provoked in pretraining.
    recipe.write_text(text.replace("lr = 0.05", "lr = 1e6"))
    done = atmc("run", str(recipe), "--out", str(tmp_path / "o"), "--no-progress")
    assert done.returncode == 1
    assert "diverged in stage 'pretrain'" in done.stderr
    assert "Lower [train] lr" in done.stderr
    assert "no checkpoint to go back to" in done.stderr  # none is claimed when none exists


def test_divergence_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    from atmc_plugin.app.plan import make_plan
    from atmc_plugin.app.recipe import load_recipe
    from atmc_plugin.app.runner import DivergedError, Trainer

    recipe = load_recipe(TINY)
    plan = make_plan(recipe, torch.device("cpu"))
    run = RunDir.prepare(tmp_path / "o", recipe, resume=False)
    trainer = Trainer(plan, plan.new_model(), run)
    trainer.enter("pretrain", None)
    trainer.train_epoch("pretrain", 0)
    run.save_checkpoint(run.last, trainer.state(0, 1), recipe)
    good = run.last.read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(DivergedError, match=r"epoch 2, step 1: loss = nan"):
        trainer.train_epoch("pretrain", 1)
    assert run.last.read_bytes() == good
    assert load_checkpoint(run.last, recipe)["epoch"] == 1


def test_plugins_lists_adapters_with_origin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "torch_pruning  [adapter, atmc-plugin" in out
    assert "inc  [adapter, atmc-plugin" in out
    assert "atmc.attacks  [plugin, built-in]" in out


def test_module_entry_point_help() -> None:
    done = atmc("--help")
    assert done.returncode == 0
    assert "atmc run examples/recipes/digits_tp_inc.toml" in done.stdout


def test_inc_recipe_ships_int8_and_evaluates_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "inc"
    assert main(["run", str(RECIPES / "tiny_inc.toml"), "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["int8"] is True
    # Deployment latency: compiled (int8 kernels) where inductor works, else said why not.
    assert set(results["latency_eager_ms"]) == {"dense", "compressed"}
    if results["latency_kind"] == "compiled":
        assert results["latency_ms"] != results["latency_eager_ms"]
        assert "compiled with `torch.compile`" in (out / "report.md").read_text()
    else:
        assert results["latency_compile_error"], "eager latency without a reason"
        assert "torch.compile failed here" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["eval", str(out / "final.pt"), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)  # the int8 model is rebuilt identically
    assert evaluated["clean"] == results["evaluation"]["compressed"]["clean"]
    storage = results["size"]["storage"]  # int8 codes + per-channel scales, compact file
    assert storage["total_bytes"] <= results["size"]["compact_file_bytes"]
    shutil.rmtree(out / "checkpoints")
    assert main(["report", str(out)]) == 0


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_torchrun_two_processes_gloo_only_rank0_writes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            "-m",
            "atmc_plugin",
            "run",
            str(TINY),
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=3600,  # a guard against a hung child, not a speed check
    )
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2
    records = RunDir(out).read_metrics()
    assert len([r for r in records if r["kind"] == "epoch"]) == 7  # one writer, not two
    assert (out / "results.json").is_file()


def test_plain_atmc_mlp_without_attack_and_factorized(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    recipe = tmp_path / "mlp.toml"
    recipe.write_text(
        "[data]\ntrain_limit = 256\ntest_limit = 60\n"
        "[model]\nname = 'mlp'\nhidden = [32]\n"
        "[train]\npretrain_epochs = 1\ncompress_epochs = 2\nfinetune_epochs = 1\n"
        "[atmc]\nattack = false\n"
        "[atmc.constraint]\ndensity = 0.3\nbits = 4\nfactorize = true\nramp_steps = 200\n"
        "[eval]\neps = 0.1\nlatency_batch = 8\n"
    )
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    # 2 epochs of 4 batches cannot hold a 200-step anneal: the user is told, before training
    assert "ramp_steps = 200 is longer than the compression stage (8 optimizer" in caplog.text
    assert "Leave ramp_steps unset" in caplog.text
    records = [r for r in RunDir(out).read_metrics() if r["kind"] == "epoch"]
    assert all(r["train_adv_acc"] is None for r in records)
    results = json.loads((out / "results.json").read_text())
    assert results["size"]["size_ratio"] <= 0.3 * 4 / 32 + 1e-9
    capsys.readouterr()
    assert main(["eval", str(out / "final.pt"), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)  # the factorization is rebuilt on load
    assert evaluated["clean"] == results["evaluation"]["compressed"]["clean"]


INC_ATMC = """
[run]
name = "tiny-inc-atmc"
seed = 2
device = "cpu"
[data]
train_limit = 256
test_limit = 60
[model]
name = "digits_cnn"
width = 8
[train]
pretrain_epochs = 1
compress_epochs = 2
finetune_epochs = 1
[atmc.attack]
eps = 0.1
steps = 2
[inc.atmc]
bits = 8
density = 0.2
eps = 0.1
steps = 2
ramp_steps = 4
"""


@pytest.mark.parametrize("backend", ["pt2e", "none"])
def test_inc_atmc_recipe_runs_through_the_command(tmp_path: Path, backend: str) -> None:
    recipe = tmp_path / "inc_atmc.toml"
    recipe.write_text(INC_ATMC + f'backend = "{backend}"\n')
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["size"]["size_ratio"] <= 0.2 * 8 / 32 + 1e-9


@pytest.mark.parametrize("line", ['backend = "rtn"', ""])
def test_inc_atmc_rtn_is_refused_before_any_work(
    tmp_path: Path, line: str, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = tmp_path / "inc_atmc.toml"
    recipe.write_text(INC_ATMC + line + "\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    assert "backend = 'pt2e'" in caplog.text


@pytest.mark.parametrize("line", ['attack = "nosuch"', "density = 0"])
def test_inc_atmc_values_fail_before_pretraining(
    tmp_path: Path, line: str, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = tmp_path / "inc_atmc.toml"
    recipe.write_text(INC_ATMC + 'backend = "none"\n' + line + "\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_an_io_error_ends_with_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import atmc_plugin.app.job

    def full_disk(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atmc_plugin.app.job, "run_recipe", full_disk)
    assert main(["run", str(TINY), "--out", str(tmp_path / "o")]) == 1
    assert "No space left on device" in caplog.text and "--resume" in caplog.text
    assert "Traceback" not in caplog.text


ATMC = (sys.executable, "-m", "atmc_plugin")


def test_the_console_shows_evaluation_progress_and_no_tool_chatter(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("INC_TARGET_DEVICE", "LOGLEVEL")}
    done = subprocess.run(
        [*ATMC, "run", str(RECIPES / "tiny_inc.toml"), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1"},
        timeout=3600,  # a guard against a hung child, not a speed check
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "evaluating compressed: batch 1/1, pgd20x2 (1/1):" in done.stderr
    for chatter in ("Auto detect accelerator", "Failed to load", "triton", "qdq mode", "_pytree"):
        assert chatter not in done.stderr, chatter
    report = (tmp_path / "run" / "report.md").read_text()
    assert "evaluation took dense" in report


def test_verbose_lets_the_tools_speak() -> None:
    import logging

    from atmc_plugin.app.cli import THIRD_PARTY_LOGGERS, _parser, _route_third_party_logs

    assert _parser().parse_args(["run", "r.toml", "--verbose"]).verbose is True
    try:
        _route_third_party_logs(verbose=True)
        assert all(logging.getLogger(n).level == logging.DEBUG for n in THIRD_PARTY_LOGGERS)
        _route_third_party_logs(verbose=False)
        assert all(logging.getLogger(n).level == logging.ERROR for n in THIRD_PARTY_LOGGERS)
    finally:
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
