"""Shipping: files a serving stack loads without atmc-plugin (issue 21, part 1).

``atmc_plugin.artifacts.export_model`` and ``atmc export`` write torch.export programs, ONNX
and INC's own format; each file is reloaded and checked before it is kept, and a fresh process
that cannot import atmc-plugin, INC, Torch-Pruning or torchattacks loads and runs it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from atmc_plugin import ATMCError, InputError
from atmc_plugin.app.cli import main
from atmc_plugin.app.models import DigitsCNN
from atmc_plugin.artifacts import export_model

RECIPES = Path(__file__).parent / "recipes"
BLOCKED = (
    "atmc_plugin",
    "atmc_plugin_adapters",
    "neural_compressor",
    "torch_pruning",
    "torchattacks",
)


def _batch(n: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _quiet_inc(monkeypatch):
    monkeypatch.setenv("INC_TARGET_DEVICE", "cpu")
    logging.getLogger("neural_compressor").setLevel(logging.ERROR)


def test_pt2_and_onnx_are_checked_and_listed(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    model.train()
    records = export_model(model, _batch(), tmp_path, formats=("pt2", "onnx"), batches=(1, 5))
    assert [r.format for r in records] == ["pt2", "onnx"]
    assert all(r.dynamic_batch and r.checked_batches == (1, 5) for r in records)
    assert records[0].max_abs_diff == 0.0 and records[1].max_abs_diff < 1e-4
    assert model.training  # the user's model keeps its mode
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["path"] for e in manifest] == [r.path for r in records]
    assert all(Path(r.path).stat().st_size == r.bytes for r in records)
    # nothing is overwritten
    before = (tmp_path / "model.pt2").read_bytes()
    with pytest.raises(InputError, match="exists; nothing was overwritten"):
        export_model(model, _batch(), tmp_path)
    assert (tmp_path / "model.pt2").read_bytes() == before


def test_a_graph_that_freezes_the_batch_says_so(tmp_path) -> None:
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(2, 64))  # the batch size is baked into the graph

    record = export_model(FixedBatch(), _batch(2), tmp_path, batches=(1, 2))[0]
    assert not record.dynamic_batch and record.checked_batches == (2,)
    assert "batch frozen at 2" in record.note


def test_a_model_export_cannot_trace_leaves_nothing(tmp_path) -> None:
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow
                return x.flatten(1)
            return -x.flatten(1)

    with pytest.raises(ATMCError, match=r"cannot be exported with torch\.export"):
        export_model(DataDependent(), _batch(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused(tmp_path) -> None:
    with pytest.raises(InputError, match="choose from pt2, onnx"):
        export_model(DigitsCNN(width=8), _batch(), tmp_path, formats=("tflite",))
    with pytest.raises(InputError, match="batch size 0"):
        export_model(DigitsCNN(width=8), _batch(), tmp_path, batches=(0,))


CHILD = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked in this process")
        return None

sys.meta_path.insert(0, Block())
import torch
import torch.ao.quantization.fx._decomposed  # the one import int8 programs need
import onnxruntime

case = torch.load({expected!r}, weights_only=True)
for name, want in case["outputs"].items():
    model = torch.export.load({folder!r} + "/" + name + ".pt2").module()
    got = model(case["x"])
    assert float((got - want).abs().max()) == 0.0, name
    session = onnxruntime.InferenceSession({folder!r} + "/" + name + ".onnx")
    out = session.run(None, {{session.get_inputs()[0].name: case["x"].numpy()}})[0]
    agree = float((torch.from_numpy(out).argmax(1) == want.argmax(1)).float().mean())
    assert agree >= 0.99, (name, agree)
for blocked in {blocked!r}:
    assert blocked not in sys.modules, blocked
print("ok")
"""


def test_files_load_in_a_process_without_atmc_plugin_or_the_tools(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("neural_compressor.torch.quantization")
    from atmc_plugin_adapters.inc.pt2e import quantize_static_int8

    torch.manual_seed(0)
    fp32 = DigitsCNN(width=8).eval()
    x = _batch(32)
    int8 = quantize_static_int8(fp32, x[:4], [(x, torch.zeros(32, dtype=torch.long))])
    folder = tmp_path / "ship"
    for name, model in {"fp32": fp32, "int8": int8}.items():
        export_model(model, x[:4], folder, formats=("pt2", "onnx"), name=name, batches=(3, 32))
    probe = _batch(7)
    with torch.no_grad():
        outputs = {"fp32": fp32(probe), "int8": int8(probe)}
    _load_without_the_tools(tmp_path, folder, probe, outputs)


def _load_without_the_tools(
    tmp_path: Path, folder: Path, probe: torch.Tensor, outputs: dict[str, torch.Tensor]
) -> None:
    """A fresh process that cannot import atmc-plugin or the tools runs every pt2 and ONNX
    file of ``folder`` named in ``outputs`` and matches the in-process outputs."""
    expected = tmp_path / f"expected-{folder.name}.pt"
    torch.save({"x": probe, "outputs": outputs}, expected)
    script = CHILD.format(blocked=BLOCKED, expected=str(expected), folder=str(folder))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""},
        timeout=3600,  # a guard against a hung child, not a speed check
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


@pytest.fixture(scope="module")
def inc_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    assert main(["run", str(RECIPES / "tiny_inc.toml"), "--out", str(out), "--no-progress"]) == 0
    return out


def test_atmc_export_writes_every_format_of_an_inc_run(inc_run, capsys) -> None:
    pytest.importorskip("onnxruntime")
    # atmc run already wrote, checked and timed the pt2 files, and says so in its report
    results = json.loads((inc_run / "results.json").read_text())
    names = sorted(Path(f["path"]).name for f in results["artifacts"]["files"])
    assert names == ["compressed.pt2", "shipped.pt2"]
    assert results["devices"] == {"dense": "cpu", "compressed": "cpu"}
    report = (inc_run / "report.md").read_text()
    assert "## Shipped files" in report and "`shipped.pt2`" in report
    assert "macs" not in results["size"]["compression"] and results["size"]["macs"] > 0
    records = [json.loads(line) for line in (inc_run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["test_robust"] <= 1 for r in records if r["kind"] == "epoch")
    info = json.loads((inc_run / "run.json").read_text())
    assert info["versions"]["neural-compressor"] and info["versions"]["torch-pruning"]
    argv = ["export", str(inc_run), "--format", "pt2", "onnx", "inc", "--batch", "1", "9"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "shipped pt2:" in printed and "torch.ao.quantization.fx._decomposed" in printed
    assert "    eager: batch 1:" in printed and "    runtime: batch 1:" in printed
    manifest = json.loads((inc_run / "export" / "manifest.json").read_text())
    written = {(e["name"], e["format"]) for e in manifest}
    assert written == {
        ("compressed", "pt2"),
        ("compressed", "onnx"),
        ("shipped", "pt2"),
        ("shipped", "onnx"),
        ("shipped", "inc"),
    }
    checked = {(e["name"], e["format"]): e["checked_batches"] for e in manifest}
    assert checked[("shipped", "onnx")] == checked[("shipped", "inc")] == [1, 9]
    assert checked[("shipped", "pt2")] == [1, 16]  # kept from atmc run (1 and latency_batch)
    assert all(e["latency"] for e in manifest if e["format"] in ("pt2", "onnx"))
    from neural_compressor.torch.quantization import load

    restored = load(str(inc_run / "export" / "shipped.inc"))  # INC's own load restores it
    assert restored(_batch(3)).shape == (3, 10)
    # the run's own files load where atmc-plugin and the tools cannot be imported
    from atmc_plugin.app.final import rebuild_final

    final = rebuild_final(inc_run / "final.pt", torch.device("cpu"))
    probe = _batch(5)
    with torch.no_grad():
        outputs = {"compressed": final.model(probe), "shipped": final.shipped(probe)}
    _load_without_the_tools(inc_run.parent, inc_run / "export", probe, outputs)
    # a second export keeps what is listed and checked, and writes nothing over it
    before = {p.name: p.stat().st_mtime_ns for p in (inc_run / "export").iterdir()}
    assert main(["export", str(inc_run), "--format", "pt2", "inc"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (inc_run / "export").iterdir()}
    assert {k: v for k, v in after.items() if k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }


def test_atmc_export_refuses_what_the_run_cannot_give(tmp_path, inc_run, caplog) -> None:
    with caplog.at_level(logging.ERROR):
        assert main(["export", str(inc_run), "--format", "tflite", "--out", str(tmp_path)]) == 2
    assert "this run exports pt2, onnx, inc" in caplog.text
    with caplog.at_level(logging.ERROR):
        assert main(["export", str(tmp_path)]) == 2
    assert "has no final.pt" in caplog.text


def test_time_artifact_loads_the_file_and_times_each_batch(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from atmc_plugin.serving import time_artifact

    torch.manual_seed(0)
    pt2, onnx = export_model(DigitsCNN(width=8), _batch(), tmp_path, formats=("pt2", "onnx"))
    timed = time_artifact(pt2, _batch(), (1, 6), repeats=3)
    assert set(timed["eager"]) == {1, 6} and all(ms > 0 for ms in timed["eager"].values())
    for size in (1, 6):  # compiled, or the failure at that batch size said
        assert (
            size in timed["compiled"]
            or any(str(size) in k for k in timed["errors"])
            or ("compile" in timed["errors"])
        )
    assert timed["threads"] == torch.get_num_threads() and timed["device"] == "cpu"
    ort = time_artifact(onnx, _batch(), (2,), repeats=3)
    assert set(ort["runtime"]) == {2} and not ort["eager"]


def test_the_readme_deploy_commands_run(inc_run) -> None:
    """The README's deploy block: its `atmc export` and `python -c` lines, on a tiny INC run
    (its `atmc run` line is the default recipe, run by its own tests in shorter form)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("### Deploy:")[1].split("```bash\n")[1].split("```")[0]
    lines = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    assert lines[0].startswith("atmc run examples/recipes/digits_tp_inc.toml")
    out = inc_run.parent / "readme-export"
    export = lines[1].replace("runs/digits-tp-inc", str(inc_run)).split()[1:]
    assert main([*export, "--out", str(out), "--no-latency"]) == 0
    code = lines[2].split('"', 1)[1].rsplit('"', 1)[0]
    code = code.replace("runs/digits-tp-inc/export", str(out))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=3600
    )  # the timeout is a guard against a hung child, not a speed check
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("tensor([")
