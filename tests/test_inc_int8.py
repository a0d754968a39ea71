"""INC static int8 (PT2E) with ATMC: attackable int8, adversarial calibration, robust autotune."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("neural_compressor.torch.quantization")

from atmc_plugin_adapters.inc.pt2e import (
    quantize_static_int8,
    robust_eval_fn,
    straight_through_copy,
    weight_movement,
)

from atmc_plugin import AttackConfig, ConfigError, InputError
from atmc_plugin.app.models import DigitsCNN

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


@pytest.fixture(autouse=True)
def _quiet_inc(monkeypatch):
    monkeypatch.setenv("INC_TARGET_DEVICE", "cpu")
    logging.getLogger("neural_compressor").setLevel(logging.ERROR)


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


def test_straight_through_copy_is_identical_and_differentiable() -> None:
    torch.manual_seed(0)
    model = DigitsCNN(width=8).eval()
    x, y = _batch()
    q = quantize_static_int8(model, x[:4], [(x, y)], attack=AttackConfig(eps=0.1, steps=2))
    ste = straight_through_copy(q)
    with torch.no_grad():
        assert torch.equal(q(x), ste(x))
        assert q(x[:3]).shape == (3, 10)  # the batch dimension stayed dynamic
    xi = x.clone().requires_grad_(True)
    ste(xi).sum().backward()
    assert xi.grad is not None and float(xi.grad.abs().sum()) > 0
    xq = x.clone().requires_grad_(True)
    q(xq).sum().backward()
    assert xq.grad is None  # the int8 graph itself gives attacks no input gradient
    assert all(v > 0 for v in weight_movement(q).values())


def test_user_model_left_unchanged() -> None:
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch()
    quantize_static_int8(model, x[:4], [(x, y)], attack=AttackConfig(eps=0.1, steps=1))
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_robust_eval_fn_never_zero_and_attacks_int8() -> None:
    torch.manual_seed(0)
    model = DigitsCNN(width=8).eval()
    x, y = _batch()
    q = quantize_static_int8(model, x[:4], [(x, y)])
    score = robust_eval_fn(x, y, eps=0.5, robust_weight=1.0)(q)
    assert score >= 1e-6
    with pytest.raises(InputError, match="floor"):
        robust_eval_fn(x, y, eps=0.1, floor=0)


def test_unexportable_model_is_a_clear_error() -> None:
    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow
                return self.fc(x.flatten(1))
            return -self.fc(x.flatten(1))

    x, y = _batch()
    with pytest.raises(InputError, match="cannot be exported"):
        quantize_static_int8(Branchy(), x[:4], [(x, y)])


def test_show_atmc_int8_is_more_robust_than_plain_inc_int8() -> None:
    from digits_inc_atmc import run

    out = run(width=16, dense_epochs=4, finetune_epochs=3)
    _plain_clean, plain_pgd = out["int8_plain"]
    atmc_clean, atmc_pgd = out["int8_atmc"]
    assert atmc_clean > 0.9
    assert atmc_pgd > plain_pgd, (atmc_pgd, plain_pgd)
    assert out["codes_atmc"] > 0.95  # INC keeps the integer codes ATMC trained with


def test_evaluate_attacks_int8_through_the_plugin_copy() -> None:
    from torch.nn import functional as F

    from atmc_plugin import evaluate
    from atmc_plugin.app.datasets import load_digits

    x_train, y_train, x, y = load_digits(seed=0)
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for start in range(0, 1024, 64):  # one quick epoch: a classifier, not a constant
        loss = F.cross_entropy(model(x_train[start : start + 64]), y_train[start : start + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    q = quantize_static_int8(model, x[:4], [(x_train[:128], y_train[:128])])
    with torch.no_grad():
        keep = q(x[:200]).argmax(1) == y[:200]
    report = evaluate(q, (x[:200][keep][:32], y[:200][keep][:32]), eps=0.3)
    assert "zero-gradients" not in report.flags
    assert report.clean == 1.0 and report.robust < 0.5  # the attacks reach the int8 graph


@pytest.mark.parametrize("attack", ["pgd", {"name": "pgd", "eps": 0.1, "steps": 1}])
def test_attack_given_by_name_or_dict_calibrates_like_the_config(attack) -> None:
    torch.manual_seed(0)
    model = DigitsCNN(width=8).eval()
    x, y = _batch()
    q = quantize_static_int8(model, x[:4], [(x, y)], attack=attack, seed=0)
    assert q(x).shape == (16, 10)


def test_a_bad_attack_value_names_the_forms_it_takes() -> None:
    model = DigitsCNN(width=8).eval()
    x, y = _batch()
    with pytest.raises(InputError, match="an attack name such as 'pgd'"):
        quantize_static_int8(model, x[:4], [(x, y)], attack=0.1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Did you mean 'eps'"):
        quantize_static_int8(model, x[:4], [(x, y)], attack={"name": "pgd", "epsilon": 0.1})
