from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from atmc_plugin import ATMC, ADMMConfig, ATMCConfig, AttackConfig, ConstraintConfig, InputError
from atmc_plugin.app.models import DigitsCNN
from atmc_plugin.export import load_compact, save_compact, storage_report

GRIDS = {
    "codebook": {},
    "pt2e": {"quantizer": "int", "granularity": "channel", "scale_rule": "pt2e"},
    "rtn-group": {"quantizer": "int", "granularity": "group", "group_size": 7},
    "asym-tensor": {"quantizer": "int", "symmetric": False},
}


def _compressed(density: float | None, bits: int | None, grid: str = "codebook"):
    torch.manual_seed(0)
    model = DigitsCNN(width=16)
    cfg = ATMCConfig(
        attack=AttackConfig(eps=0.1, steps=1),
        constraint=ConstraintConfig(density=density, bits=bits, **GRIDS[grid]),
        admm=ADMMConfig(interval=2),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    atmc = ATMC(model, cfg, optimizer=opt, total_steps=3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(3):
        x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        loss = F.cross_entropy(model(atmc.perturb(x, y)), y) + atmc.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    atmc.finalize()
    return model, atmc


@pytest.mark.parametrize(
    ("density", "bits", "grid"),
    [
        (0.02, 4, "codebook"),
        (0.3, 8, "codebook"),
        (0.05, None, "codebook"),
        (None, 2, "codebook"),
        (0.1, 8, "pt2e"),
        (0.2, 4, "rtn-group"),
        (None, 3, "asym-tensor"),
    ],
)
def test_compact_round_trip_and_size(tmp_path, density, bits, grid) -> None:
    model, atmc = _compressed(density, bits, grid)
    path = tmp_path / "model.safetensors"
    report = save_compact(path, model, atmc)
    fresh = DigitsCNN(width=16)
    fresh.load_state_dict(load_compact(path))
    model.eval(), fresh.eval()
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    size = path.stat().st_size
    header = int.from_bytes(path.read_bytes()[:8], "little") + 8
    assert report.total_bytes <= size - header <= report.total_bytes + 64 * 16  # alignment slack
    assert report == storage_report(model, atmc)
    dense = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert size < dense
    if density == 0.02:
        assert report.ratio < 0.1  # 2% of the weights at 4 bits, plus biases/BN and indices
    # the self-contained decoder (NumPy only) gives exactly the same tensors
    decoded = _decoder().decode(path)
    expected = load_compact(path)
    assert set(decoded) == set(expected)
    for key, value in expected.items():
        got = torch.from_numpy(decoded[key])
        assert torch.equal(got.reshape(value.shape), value), key  # 0-d: safetensors says (1,)


def _decoder():
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "examples" / "decode_compact.py"
    spec = importlib.util.spec_from_file_location("decode_compact", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_foreign_file_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(InputError, match="not an atmc-plugin compact file"):
        load_compact(path)


def test_layer_costs_match_hand_count() -> None:
    from atmc_plugin.costs import layer_costs

    model = DigitsCNN(width=8)
    model.train()
    costs = layer_costs(model, torch.rand(1, 1, 8, 8))
    assert model.training
    assert costs["features.0"] == {"params": 8 * 1 * 9, "macs": 8 * 1 * 9 * 64}
    assert costs["features.7"]["macs"] == 32 * 16 * 9 * 16  # after 2x2 max-pool: 4x4
    assert costs["fc"] == {"params": 32 * 10 + 10, "macs": 32 * 10}


def _rewrite(path, change, keep_digest: bool = True) -> None:
    """Write ``path`` again with its layout or arrays changed (a crafted file)."""
    import json

    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as handle:
        meta = handle.metadata()
        arrays = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    layout = json.loads(meta["layout"])
    change(layout, arrays)
    if not keep_digest:
        meta.pop("sha256")
    save_file(arrays, str(path), metadata={**meta, "layout": json.dumps(layout)})


def _first(layout) -> str:
    return next(iter(layout))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda lay, arr: lay[_first(lay)].update(numel=2**40, shape=[2**20, 2**20]), "exceeds"),
        (lambda lay, arr: lay[_first(lay)].update(numel=7), "does not match shape"),
        (lambda lay, arr: lay[_first(lay)].update(bits=0), "bits 0"),
        (lambda lay, arr: arr[f"{_first(lay)}::codebook"].fill(float("nan")), "codebook"),
        (lambda lay, arr: lay[_first(lay)].update(nnz=lay[_first(lay)]["nnz"] + 1), "non-zeros"),
        (lambda lay, arr: arr.pop(f"{_first(lay)}::support"), "support array is missing"),
    ],
)
def test_crafted_compact_files_are_refused(tmp_path, change, match) -> None:
    model, atmc = _compressed(0.3, 4)
    path = tmp_path / "model.safetensors"
    save_compact(path, model, atmc)
    _rewrite(path, change, keep_digest=False)  # crafted: no digest to betray it
    with pytest.raises(InputError, match=match):
        load_compact(path)


def test_a_corrupt_header_is_refused(tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(InputError, match="corrupt or not a compact file"):
        load_compact(path)


def test_the_compact_file_is_written_atomically_with_mode_644(tmp_path) -> None:
    model, atmc = _compressed(0.3, 4)
    path = tmp_path / "model.safetensors"
    save_compact(path, model, atmc)
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_a_flipped_value_in_the_compact_file_is_detected(tmp_path) -> None:
    model, atmc = _compressed(0.3, 4)
    path = tmp_path / "model.safetensors"
    save_compact(path, model, atmc)

    def flip(layout, arrays):
        name = next(k for k in arrays if "::" not in k and arrays[k].size)
        arrays[name] = arrays[name].copy()
        arrays[name].reshape(-1)[0] += 1.0

    _rewrite(path, flip)
    with pytest.raises(InputError, match="corrupt: its arrays do not match"):
        load_compact(path)
