from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from atmc_plugin import ATMC, ATMCConfig, AttackConfig, InputError, PluginError
from atmc_plugin.adversary import Adversary
from atmc_plugin.plugins import get_plugin_manager


def _adv(model, **kw) -> Adversary:
    return Adversary(model, AttackConfig(**kw), get_plugin_manager(entry_points=False))


@pytest.mark.parametrize("name", ["pgd", "fgsm", "ffgsm", "tpgd"])
def test_perturbation_within_eps_and_range(tiny_model, batch, name) -> None:
    x, y = batch
    adv = _adv(tiny_model, name=name, eps=0.1, steps=3)(x, y)
    assert adv.shape == x.shape and adv.dtype == torch.float32
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert not torch.equal(adv, x)


def test_nfgsm_is_not_projected_to_eps_but_to_its_own_bound(tiny_model, batch) -> None:
    x, y = batch
    x = 0.25 + 0.5 * x  # away from the box edges, so the clip to [0, 1] does not hide the bound
    attack = _adv(tiny_model, name="nfgsm", eps=0.05)
    config = attack.config
    assert config.step_size == 0.05 and config.noise_magnitude == pytest.approx(0.1)
    assert config.radius == pytest.approx(0.15)  # 2 * eps noise + an eps step (the paper's)
    torch.manual_seed(0)
    adv = attack(x, y)
    gap = float((adv - x).abs().max())
    assert 0.05 < gap <= 0.15 + 1e-6  # beyond eps: N-FGSM does not project back
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    wider = _adv(tiny_model, name="nfgsm", eps=0.05, noise=4.0).config
    assert wider.radius == pytest.approx(0.25)


def test_nfgsm_is_one_forward_backward_pass(tiny_model, batch) -> None:
    calls = []
    hook = tiny_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        _adv(tiny_model, name="nfgsm", eps=0.05)(*batch)
    finally:
        hook.remove()
    assert len(calls) == 1


def test_noise_is_only_for_nfgsm() -> None:
    from atmc_plugin import ConfigError

    with pytest.raises(ConfigError, match="only N-FGSM takes it"):
        AttackConfig(name="pgd", noise=2.0)


def test_pgd_increases_the_loss(tiny_model, batch) -> None:
    x, y = batch
    tiny_model.eval()
    adv = _adv(tiny_model, eps=0.1, steps=5, random_start=False)(x, y)
    with torch.no_grad():
        assert F.cross_entropy(tiny_model(adv), y) > F.cross_entropy(tiny_model(x), y)


def test_modes_restored_and_frozen_bn_stays_frozen(tiny_model, batch) -> None:
    tiny_model.train()
    tiny_model.bn1.eval()  # the user froze this BatchNorm
    stats = tiny_model.bn2.running_mean.clone()
    _adv(tiny_model, eps=0.1, steps=2)(*batch)
    assert tiny_model.training and tiny_model.bn2.training
    assert not tiny_model.bn1.training
    assert torch.equal(tiny_model.bn2.running_mean, stats)  # attacked in eval mode


def test_no_parameter_gradients_and_requires_grad_restored(tiny_model, batch) -> None:
    tiny_model.fc.weight.requires_grad_(False)
    _adv(tiny_model, eps=0.1, steps=2)(*batch)
    assert all(p.grad is None for p in tiny_model.parameters())
    assert not tiny_model.fc.weight.requires_grad
    assert tiny_model.conv1.weight.requires_grad


def test_existing_gradients_untouched(tiny_model, batch) -> None:
    x, y = batch
    F.cross_entropy(tiny_model(x), y).backward()
    before = [p.grad.clone() for p in tiny_model.parameters()]
    _adv(tiny_model, eps=0.1, steps=2)(x, y)
    assert all(torch.equal(b, p.grad) for b, p in zip(before, tiny_model.parameters(), strict=True))


def test_works_inside_no_grad(tiny_model, batch) -> None:
    with torch.no_grad():
        adv = _adv(tiny_model, eps=0.1, steps=2)(*batch)
    assert not torch.equal(adv, batch[0])


def test_normalized_inputs(tiny_model, batch) -> None:
    x, y = batch
    mean, std = 0.3, 0.2
    xn = (x - mean) / std
    adv = _adv(tiny_model, eps=0.1, steps=2, mean=(mean,), std=(std,))(xn, y)
    pixels = adv * std + mean
    assert float((pixels - x).abs().max()) <= 0.1 + 1e-5
    with pytest.raises(InputError, match=r"set attack\.mean and attack\.std"):
        _adv(tiny_model, eps=0.1)(xn, y)


@pytest.mark.parametrize(
    ("x", "y", "fragment"),
    [
        (
            torch.rand(4, 1, 8, 8, dtype=torch.float64),
            torch.zeros(4, dtype=torch.long),
            "x.float()",
        ),
        (torch.rand(4, 1, 8, 8), torch.zeros(4), "integer class indices"),
        (torch.rand(4, 1, 8, 8), torch.zeros(3, dtype=torch.long), "do not match a batch of 4"),
        (
            torch.rand(4, 1, 8, 8) * 2,
            torch.zeros(4, dtype=torch.long),
            "attacks need values in [0, 1]",
        ),
        (torch.full((4, 1, 8, 8), float("nan")), torch.zeros(4, dtype=torch.long), "NaN or inf"),
    ],
)
def test_bad_inputs(tiny_model, x, y, fragment) -> None:
    with pytest.raises(InputError) as info:
        _adv(tiny_model, eps=0.1)(x, y)
    assert fragment in str(info.value)


def test_int32_labels_accepted(tiny_model, batch) -> None:
    x, y = batch
    _adv(tiny_model, eps=0.1, steps=1)(x, y.int())


def test_unknown_attack_suggests_nearest(tiny_model) -> None:
    with pytest.raises(PluginError, match="Did you mean 'pgd'"):
        ATMC(tiny_model, ATMCConfig(attack=AttackConfig(name="pdg")))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_cpu_batch(tiny_model, batch) -> None:
    adversary = _adv(tiny_model, eps=0.1, steps=2)
    tiny_model.cuda()
    adv = adversary(*batch)
    assert adv.device.type == "cpu"
    assert float((adv - batch[0]).abs().max()) <= 0.1 + 1e-6


def test_the_built_in_attack_table_is_what_configs_accept() -> None:
    from atmc_plugin.attacks import BUILT_IN
    from atmc_plugin.config import SINGLE_STEP_ATTACKS, TRAINING_ATTACKS

    assert tuple(BUILT_IN) == TRAINING_ATTACKS
    assert set(SINGLE_STEP_ATTACKS) <= set(BUILT_IN)
