"""The catastrophic-overfitting guard: its settings, its checks, and a restore."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from atmc_plugin import ATMC, ATMCConfig, AttackConfig, ConfigError, InputError, OverfitWarning
from atmc_plugin.guard import GuardConfig, OverfitGuard, guard_wanted


def test_settings_are_checked_with_the_value_and_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"guard.drop = 1.5.*\(0.0, 1.0\]"):
        GuardConfig(drop=1.5)
    with pytest.raises(ConfigError, match=r'guard.enabled = .yes.*"auto", "on" or "off"'):
        GuardConfig(enabled="yes")
    with pytest.raises(ConfigError, match=r"keep must be >= drop"):
        GuardConfig(drop=0.6, keep=0.5)
    with pytest.raises(ConfigError, match=r"unknown key 'pgd_step'.*Did you mean 'pgd_steps'"):
        GuardConfig.from_dict({"pgd_step": 5})


def test_auto_watches_single_step_attacks_only() -> None:
    auto = GuardConfig()
    assert guard_wanted(auto, AttackConfig(name="ffgsm", eps=0.1))
    assert guard_wanted(auto, AttackConfig(name="nfgsm", eps=0.1))
    assert not guard_wanted(auto, AttackConfig(name="pgd", eps=0.1))
    assert guard_wanted(GuardConfig(enabled="on"), AttackConfig(name="pgd", eps=0.1))
    assert not guard_wanted(GuardConfig(enabled="off"), AttackConfig(name="fgsm", eps=0.1))
    assert not guard_wanted(auto, None)


def test_a_guard_needs_an_attack_and_a_held_out_pair(tiny_model, batch) -> None:
    with pytest.raises(ConfigError, match="give an ATMC whose config has an attack"):
        OverfitGuard(ATMC(tiny_model, ATMCConfig(attack=None)), batch, every=1)
    atmc = ATMC(tiny_model, ATMCConfig(attack=AttackConfig(name="ffgsm", eps=0.1)))
    with pytest.raises(InputError, match="held_out must be"):
        OverfitGuard(atmc, batch[0], every=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs every="):
        OverfitGuard(atmc, batch).step()


def test_checks_measure_without_touching_the_run(tiny_model, batch) -> None:
    """A check leaves the weights, the modes and the global random stream as they were; a
    healthy check keeps a copy of the states, and nothing fires on a model that just learns."""
    atmc = ATMC(tiny_model, ATMCConfig(attack=AttackConfig(name="ffgsm", eps=0.05)))
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.05)
    guard = OverfitGuard(atmc, batch, optimizer=opt, every=2)
    x, y = batch
    for _ in range(4):
        tiny_model.train()
        loss = F.cross_entropy(tiny_model(atmc.perturb(x, y)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        weights = {k: v.clone() for k, v in tiny_model.state_dict().items()}
        torch.manual_seed(5)
        expected = torch.rand(3)
        torch.manual_seed(5)
        guard.step()
        assert torch.equal(torch.rand(3), expected)
        assert tiny_model.training
        assert all(torch.equal(v, weights[k]) for k, v in tiny_model.state_dict().items())
    assert guard.checks == 2 and not guard.fired and guard.seconds > 0
    assert set(guard.last) == {"robust", "train_attack_acc"}
    assert guard._snapshot is not None and set(guard._snapshot[1]) == {"model", "atmc", "optimizer"}
    state = guard.state_dict()
    again = OverfitGuard(atmc, batch, optimizer=opt, every=2)
    again.load_state_dict(state)
    assert again.best == guard.best and again.steps == 4


def _collapse_run(guarded: bool) -> tuple[float, OverfitGuard | None]:
    """A real catastrophic overfitting: an MLP on digits upsampled to 28x28 (MNIST-sized, where
    FGSM training is known to overfit this way), 10 epochs of PGD-7 training at eps 0.2, then
    30 epochs of plain FGSM (no random start). Unguarded, PGD accuracy falls from about 0.12
    to about 0.03 while FGSM accuracy climbs. Returns the test PGD-20 x2 accuracy at the end."""
    from torch import nn

    from atmc_plugin import evaluate
    from atmc_plugin.app.datasets import load_digits

    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = load_digits(seed=0)
    x_tr, x_te = (F.interpolate(x, size=28, mode="bilinear") for x in (x_tr, x_te))
    held_out = (x_tr[-128:], y_tr[-128:])
    x_tr, y_tr = x_tr[:-128], y_tr[:-128]
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    eps, order = 0.2, torch.Generator().manual_seed(1)

    def epochs(atmc: ATMC, n: int, guard: OverfitGuard | None = None) -> None:
        for _ in range(n):
            perm = torch.randperm(len(y_tr), generator=order)
            for start in range(0, len(y_tr), 128):
                x, y = x_tr[perm[start : start + 128]], y_tr[perm[start : start + 128]]
                model.train()
                adv = atmc.perturb(x, y)
                loss = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(adv), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if guard is not None:
                    guard.step()

    epochs(ATMC(model, ATMCConfig(attack=AttackConfig(name="pgd", eps=eps, alpha=eps / 4))), 10)
    atmc = ATMC(model, ATMCConfig(attack=AttackConfig(name="fgsm", eps=eps)))
    guard = OverfitGuard(atmc, held_out, optimizer=opt, every=11) if guarded else None
    epochs(atmc, 30, guard)
    model.eval()
    return evaluate(model, (x_te, y_te), eps=eps, sanity=False).robust, guard


def test_the_guard_catches_a_real_collapse_and_ends_robust() -> None:
    collapsed, _ = _collapse_run(guarded=False)
    with pytest.warns(OverfitWarning, match=r"catastrophic overfitting at step \d+.*PGD-7"):
        robust, guard = _collapse_run(guarded=True)
    assert guard is not None and guard.fired
    (event,) = guard.events
    assert event.robust < 0.5 * event.best and event.train_attack_acc - event.robust >= 0.2
    assert event.restored and event.restored_step is not None and event.restored_step < event.step
    assert guard.atmc.config.attack.name == "pgd"  # training went on with the fallback
    assert collapsed < 0.08  # the unguarded run really collapsed
    assert robust > collapsed + 0.1 and robust > 3 * collapsed
