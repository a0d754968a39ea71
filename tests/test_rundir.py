"""Run-folder lifecycle and integrity: lock, marker, resume before the first checkpoint,
no overwriting, checksums, torn metrics lines, plain run names (issue 11)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from atmc_plugin.app.cli import main
from atmc_plugin.app.recipe import RecipeError, load_recipe
from atmc_plugin.app.rundir import RunDir, load_checkpoint
from atmc_plugin.errors import InputError
from atmc_plugin.io import remove_stale_temporaries, save_atomically

TINY = Path(__file__).parent / "recipes" / "tiny_tp.toml"


def _epochs(run: Path) -> list[dict[str, object]]:
    return [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in RunDir(run).read_metrics()
        if r.get("kind") == "epoch"
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["run", str(TINY), "--out", str(out), "--no-progress"]) == 0
    return out


def test_a_kill_before_the_first_checkpoint_resumes_from_scratch(
    reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run = RunDir.prepare(out, load_recipe(TINY), resume=False)
    run.log_metrics({"kind": "epoch", "stage": "pretrain", "epoch": 0, "half": True})
    run.release()  # the process died here: a marker and metrics, no last.pt
    assert main(["run", str(TINY), "--out", str(out), "--no-progress"]) == 2  # still ours
    assert main(["run", str(TINY), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert _epochs(out) == _epochs(reference)
    assert not (out / "run.lock").exists()


def test_a_folder_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "since": time.time()}
        (out / "run.lock").write_text(json.dumps(lock))
        with pytest.raises(RecipeError, match=f"in use by process {holder.pid}"):
            RunDir.prepare(out, load_recipe(TINY), resume=False)
        assert sorted(p.name for p in out.iterdir()) == ["run.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    run = RunDir.prepare(out, load_recipe(TINY), resume=False)  # the holder is gone: stale
    assert json.loads((out / "run.lock").read_text())["pid"] == os.getpid()
    with pytest.raises(RecipeError, match="in use by process"):
        RunDir.prepare(out, load_recipe(TINY), resume=True)  # ourselves, still holding it
    run.release()
    assert not (out / "run.lock").exists()


def test_a_foreign_folder_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "recipe.toml").write_text("my own notes")
    assert main(["run", str(TINY), "--out", str(out)]) == 2
    assert main(["run", str(TINY), "--out", str(out), "--resume"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["recipe.toml"]
    assert (out / "recipe.toml").read_text() == "my own notes"
    # a recipe inside the folder it is run into: refused, not a SameFileError
    inside = tmp_path / "inside"
    inside.mkdir()
    shutil.copy(TINY, inside / "recipe.toml")
    assert main(["run", str(inside / "recipe.toml"), "--out", str(inside)]) == 2


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "..", "a\\b"])
def test_run_names_are_plain_names(tmp_path: Path, name: str) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY.read_text().replace('name = "tiny-tp"', f"name = {json.dumps(name)}"))
    with pytest.raises(RecipeError, match="plain folder name"):
        load_recipe(recipe)


def test_a_flipped_bit_in_a_checkpoint_is_detected(reference: Path, tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    shutil.copy(reference / "checkpoints" / "last.pt", path)
    load_checkpoint(path)  # intact: reads
    payload = torch.load(path, weights_only=True)
    weight = next(v for v in payload["model"].values() if v.is_floating_point() and v.numel())
    bits = weight.view(torch.int32)
    bits.view(-1)[0] ^= 1 << 3  # one bit of one weight
    torch.save(payload, path)  # the stored sha256 is the old content's
    with pytest.raises(InputError, match="corrupt"):
        load_checkpoint(path)
    final = tmp_path / "final.pt"
    shutil.copy(reference / "final.pt", final)
    payload = torch.load(final, weights_only=True)
    payload["recipe_digest"] = "0" * 16
    torch.save(payload, final)
    assert main(["eval", str(final), "--device", "cpu"]) == 2


def test_a_torn_metrics_line_is_dropped(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = RunDir(out).read_metrics()
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "epoch", "stage": "fine')  # killed mid-write
    assert RunDir(out).read_metrics() == before
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(["garbage", *lines]) + "\n")
    with pytest.raises(InputError, match="line 1 is not a JSON record"):
        RunDir(out).read_metrics()
    first = json.loads(lines[0])
    first["test_acc"] = 0.999  # an edited number, its sha256 left as it was
    (out / "metrics.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(InputError, match="line 1 was changed or corrupted"):
        RunDir(out).read_metrics()


def test_writes_are_atomic_with_consistent_modes_and_temporaries_are_cleaned(
    tmp_path: Path,
) -> None:
    save_atomically({"x": torch.ones(2)}, tmp_path / "a.pt")
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644
    (tmp_path / ".a.pt.abc.tmp").write_bytes(b"partial")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".a.pt.abc.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_end_with_a_message_and_a_free_folder(
    tmp_path: Path, sig: int, code: int
) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "atmc_plugin", "run", str(TINY), "--out", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a job started in the background of a non-interactive shell inherits SIGINT as
        # ignored, and so would the child: give it the default disposition, as a terminal does
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 1800  # hang guard
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists():
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=3600)  # hang guard
    assert proc.returncode == code, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    assert not (out / "run.lock").exists()


def test_report_on_broken_json_is_a_clear_error(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "results.json").write_text('{"evaluation": ')
    assert main(["report", str(out)]) == 2
    (out / "results.json").write_text('{"evaluation": {}}')
    assert main(["report", str(out)]) == 2
    shutil.copy(reference / "results.json", out / "results.json")
    assert main(["report", str(out)]) == 0
    edited = json.loads((out / "results.json").read_text())
    edited["train_seconds"] = 1.0  # a changed number, the stored sha256 left as it was
    (out / "results.json").write_text(json.dumps(edited))
    assert main(["report", str(out)]) == 2


def test_a_pickled_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    torch.save({"format": "atmc-run-checkpoint", "obj": Exception("x")}, path)
    with pytest.raises(InputError, match=r"pickled Python objects.*arbitrary code"):
        load_checkpoint(path)


def test_a_corrupt_dense_checkpoint_fails_before_the_resumed_training(
    reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "checkpoints" / "dense.pt").write_bytes(b"garbage")
    last = (out / "checkpoints" / "last.pt").read_bytes()
    metrics = (out / "metrics.jsonl").read_bytes()
    assert main(["run", str(TINY), "--out", str(out), "--resume", "--no-progress"]) == 2
    # refused before any training: no epoch was added, no checkpoint rewritten
    assert (out / "metrics.jsonl").read_bytes() == metrics
    assert (out / "checkpoints" / "last.pt").read_bytes() == last


@pytest.mark.slow
def test_killed_at_ten_random_points_the_run_resumes_to_the_same_results(tmp_path: Path) -> None:
    """Fault injection: SIGKILL at 10 random moments (before the first checkpoint, mid-epoch,
    mid-save), each time resuming the same folder; the end must equal an uninterrupted run
    (both in subprocesses with one thread, so floating-point sums are comparable)."""
    import random

    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    base = [sys.executable, "-m", "atmc_plugin", "run", str(TINY), "--out"]
    subprocess.run([*base, str(reference)], env=env, check=True, capture_output=True, timeout=3600)
    out = tmp_path / "run"
    epochs = len(_epochs(reference))
    points = sorted(rng.randrange(0, epochs) for _ in range(10))
    cmd = [*base, str(out)]
    kills = 0
    for point in points:
        resume = ["--resume"] if (out / ".atmc-run").exists() else []
        proc = subprocess.Popen([*cmd, *resume], env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 1800  # hang guard
        while time.monotonic() < deadline and proc.poll() is None:
            if len(_epochs(out)) >= point:
                time.sleep(rng.uniform(0.0, 1.5))  # somewhere inside the next epoch or save
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=3600)  # hang guard
        kills += proc.returncode == -signal.SIGKILL
    assert kills >= 8, f"only {kills} of 10 runs were killed before they finished"
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _epochs(out) == _epochs(reference)
    ours = json.loads((out / "results.json").read_text())
    theirs = json.loads((reference / "results.json").read_text())
    assert ours["evaluation"] == theirs["evaluation"] and ours["size"] == theirs["size"]


def test_a_crafted_final_checkpoint_is_refused(reference: Path, tmp_path: Path) -> None:
    from atmc_plugin.app.rundir import sealed

    final = tmp_path / "final.pt"
    payload = torch.load(reference / "final.pt", weights_only=True)
    payload.pop("sha256")
    payload["model"] = {"nonsense": torch.zeros(3)}
    save_atomically(sealed(payload), final)  # well-formed and sealed, but not this model
    assert main(["eval", str(final), "--device", "cpu"]) == 2


def test_two_runs_on_one_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "atmc_plugin", "run", str(TINY), "--out", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 1800  # hang guard
        while not (out / "run.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert main(["run", str(TINY), "--out", str(out)]) == 2
        assert main(["run", str(TINY), "--out", str(out), "--resume"]) == 2
        assert proc.poll() is None  # the first run goes on, undisturbed
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=3600)  # hang guard
    assert proc.returncode == 143
