"""The INC adapter: ATMC as INC's "atmc" algorithm in quantize, prepare/convert, dicts, JSON."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F

pytest.importorskip("neural_compressor.torch.quantization")
from atmc_plugin_adapters.inc import (
    ATMCQuantConfig,
    conversion_report,
    session_of,
)
from neural_compressor.torch.quantization import (
    TuningConfig,
    autotune,
    convert,
    prepare,
    quantize,
)

from atmc_plugin import AttackConfig, ConfigError, InputError


@pytest.fixture(autouse=True)
def _quiet_inc(monkeypatch):
    monkeypatch.setenv("INC_TARGET_DEVICE", "cpu")
    logging.getLogger("neural_compressor").setLevel(logging.ERROR)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _train(model: nn.Module, steps: int = 6) -> None:
    session = session_of(model)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        loss = F.cross_entropy(model(session.perturb(x, y)), y) + session.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_quantize_runs_atmc_then_inc_rtn() -> None:
    cfg = ATMCQuantConfig(
        bits=4, group_size=16, eps=0.1, steps=2, density=0.5, interval=2, total_steps=6
    )
    q = quantize(_mlp(), cfg, run_fn=_train)
    assert type(q[1]).__name__ == "INCWeightOnlyLinear"
    report = conversion_report(q)
    assert session_of(q).atmc.step_count == 6  # projections ran from the optimizer hook
    assert report.compression.nnz <= report.compression.budget
    assert set(report.max_weight_diff) == {"1", "3"}
    assert report.worst_weight_diff < 2e-3  # INC stores scales and weights in fp16
    x = torch.rand(4, 1, 8, 8)
    q.eval()
    assert q(x).shape == (4, 10)


def test_dict_config_and_set_local() -> None:
    q = quantize(_mlp(), {"atmc": {"bits": 8, "eps": 0.1, "steps": 1}}, run_fn=_train)
    assert type(q[1]).__name__ == "INCWeightOnlyLinear"
    cfg = ATMCQuantConfig(bits=8, eps=0.1, steps=1)
    cfg.set_local("3", ATMCQuantConfig(dtype="fp32"))
    q = quantize(_mlp(), cfg, run_fn=_train)
    assert type(q[1]).__name__ == "INCWeightOnlyLinear"
    assert isinstance(q[3], nn.Linear)
    assert session_of(q).op_names == ["1"]


def test_nfgsm_reaches_atmc_through_incs_config() -> None:
    cfg = ATMCQuantConfig(bits=8, attack="nfgsm", eps=0.05, noise=3.0)
    attack = cfg.to_atmc(["1"]).attack
    assert attack is not None and attack.name == "nfgsm" and attack.noise == 3.0
    assert attack.radius == pytest.approx(0.2)


def test_json_round_trip(tmp_path) -> None:
    cfg = ATMCQuantConfig(bits=4, group_size=32, eps=0.05, density=0.2)
    path = tmp_path / "atmc.json"
    cfg.to_json_file(str(path))
    loaded = ATMCQuantConfig.from_json_file(str(path))
    assert loaded.bits == 4 and loaded.group_size == 32 and loaded.density == 0.2
    assert loaded.to_atmc(["1"]) == cfg.to_atmc(["1"])
    cfg.set_local("3", ATMCQuantConfig(dtype="fp32"))
    cfg.to_json_file(str(path))
    again = ATMCQuantConfig.from_json_file(str(path))
    assert again.local_config["3"].dtype == "fp32" and again.bits == 4


def test_prepare_train_convert() -> None:
    model = _mlp()
    prepared = prepare(model, ATMCQuantConfig(bits=4, group_size=16, eps=0.1, steps=1))
    _train(prepared, steps=3)
    assert session_of(prepared).atmc.step_count == 3
    q = convert(prepared)
    assert conversion_report(q).worst_weight_diff < 2e-3


def _global_step_hooks() -> int:
    # torch keeps global optimizer hooks in a private dict; only this count is observable.
    from torch.optim import optimizer

    return len(optimizer._global_optimizer_post_hooks)


def test_session_lives_and_dies_with_the_model() -> None:
    import gc
    import weakref

    before = _global_step_hooks()
    prepared = prepare(_mlp(), ATMCQuantConfig(bits=8, eps=0.1, steps=1))
    assert _global_step_hooks() == before + 1  # watching for the training optimizer
    alive = weakref.ref(prepared)
    del prepared
    gc.collect()
    assert alive() is None
    assert _global_step_hooks() == before


def test_follows_only_the_optimizer_that_trains_the_model() -> None:
    before = _global_step_hooks()
    prepared = prepare(_mlp(), ATMCQuantConfig(bits=8, eps=0.1, steps=1))
    other = nn.Linear(3, 3)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1)
    other(torch.rand(2, 3)).sum().backward()
    other_opt.step()
    assert session_of(prepared).atmc.step_count == 0
    _train(prepared, steps=2)
    session = session_of(prepared)
    assert session.atmc.step_count == 2  # the step that found the optimizer counts
    assert _global_step_hooks() == before  # handed over to a hook on that optimizer
    assert session.atmc.optimizer is not None
    other_opt.step()
    assert session.atmc.step_count == 2


def test_convert_a_copy_of_a_prepared_model() -> None:
    prepared = prepare(_mlp(), ATMCQuantConfig(bits=4, group_size=16, eps=0.1, steps=1))
    _train(prepared, steps=2)
    q = convert(prepared, inplace=False)
    assert q is not prepared
    assert session_of(q).model is q and session_of(q).atmc.module is q
    assert session_of(q).atmc.plugin_manager is session_of(prepared).atmc.plugin_manager
    assert conversion_report(q).worst_weight_diff < 2e-3
    assert isinstance(prepared[1], nn.Linear)  # the original stays prepared, not converted
    with pytest.raises(InputError, match="not converted yet"):
        conversion_report(prepared)


def test_autotune_with_a_config_list() -> None:
    """INC's tuner walks the ATMC configs: the 8-bit trial is scored below the fp32 baseline,
    so the tuner goes on to the 4-bit one and returns it."""
    scores = iter([1.0, 0.0, 1.0])  # baseline, 8-bit trial, 4-bit trial
    calls = []

    def eval_fn(model: nn.Module) -> float:
        calls.append(type(model[1]).__name__)
        return next(scores)

    tuned = autotune(
        _mlp(),
        TuningConfig(
            config_set=[
                ATMCQuantConfig(bits=8, eps=0.1, steps=1),
                ATMCQuantConfig(bits=4, group_size=16, eps=0.1, steps=1),
            ],
            max_trials=2,
        ),
        eval_fn=eval_fn,
        run_fn=_train,
    )
    assert calls == ["Linear", "INCWeightOnlyLinear", "INCWeightOnlyLinear"]
    assert tuned[1].bits == 4 and conversion_report(tuned).compression.nnz > 0


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="needs run_fn"):
        quantize(_mlp(), ATMCQuantConfig(bits=8))
    with pytest.raises(ConfigError, match="INC static int8 quantizes weights to 8 bits"):
        quantize(_mlp(), ATMCQuantConfig(bits=4, backend="pt2e"), run_fn=_train)
    with pytest.raises(ConfigError, match=r"integer grids take 1\.\.8 bits"):
        quantize(_mlp(), ATMCQuantConfig(bits=12), run_fn=_train)
    cfg = ATMCQuantConfig(bits=8)
    cfg.set_local("3", ATMCQuantConfig(bits=4))
    with pytest.raises(ConfigError, match="different grids"):
        quantize(_mlp(), cfg, run_fn=_train)
    with pytest.raises(InputError, match="no ATMC session"):
        session_of(_mlp())


def test_wrap_turns_inc_configs_into_atmc_configs() -> None:
    from neural_compressor.torch.quantization import RTNConfig, StaticQuantConfig

    import atmc_plugin

    atmc_cfg = atmc_plugin.ATMCConfig.from_dict(
        {"attack": {"eps": 0.1, "steps": 3}, "constraint": {"density": 0.2}}
    )
    cfg = atmc_plugin.wrap(RTNConfig(bits=4, group_size=32, use_layer_wise=False), atmc_cfg)
    assert isinstance(cfg, ATMCQuantConfig)
    assert (cfg.bits, cfg.group_size, cfg.backend, cfg.density, cfg.eps) == (4, 32, "rtn", 0.2, 0.1)
    static = atmc_plugin.wrap(StaticQuantConfig(), atmc_cfg, total_steps=40)
    assert (static.bits, static.backend, static.total_steps) == (8, "pt2e", 40)
    wrong = atmc_plugin.ATMCConfig.from_dict({"constraint": {"bits": 4, "quantizer": "int"}})
    with pytest.raises(ConfigError, match="ATMC must train for the grid INC will use"):
        atmc_plugin.wrap(StaticQuantConfig(), wrong)


def test_unsupported_inc_versions_are_refused() -> None:
    from atmc_plugin_adapters.inc.compat import check_supported

    from atmc_plugin import ATMCError

    check_supported("3.10")
    check_supported("4.0.1")
    with pytest.raises(ATMCError, match=r"3\.9\.1 is not supported.*pip install -U"):
        check_supported("3.9.1")
    with pytest.raises(ATMCError, match="needs Intel Neural Compressor's torch part"):
        check_supported(None)


def test_autotune_accepts_a_single_config() -> None:
    from atmc_plugin_adapters.inc import autotune as atmc_autotune

    tuned = atmc_autotune(
        _mlp(),
        ATMCQuantConfig(bits=8, eps=0.1, steps=1),
        eval_fn=lambda m: 1.0,
        run_fn=_train,
    )
    assert type(tuned[1]).__name__ == "INCWeightOnlyLinear"
    with pytest.raises(ConfigError, match="non-empty list"):
        atmc_autotune(_mlp(), [], eval_fn=lambda m: 1.0, run_fn=_train)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rtn_on_cuda(monkeypatch) -> None:
    monkeypatch.delenv("INC_TARGET_DEVICE", raising=False)  # let INC pick CUDA itself
    model = _mlp().cuda()

    def train_cuda(m: nn.Module) -> None:
        session = session_of(m)
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        x = torch.rand(16, 1, 8, 8, device="cuda")
        y = torch.randint(0, 10, (16,), device="cuda")
        loss = F.cross_entropy(m(session.perturb(x, y)), y) + session.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()

    q = quantize(model, ATMCQuantConfig(bits=4, group_size=16, eps=0.1, steps=1), run_fn=train_cuda)
    assert conversion_report(q).worst_weight_diff < 2e-3


def test_budget_allocation_and_schedule_reach_atmc(tmp_path) -> None:
    cfg = ATMCQuantConfig(
        bits=4, group_size=16, density=0.1, allocation="magnitude", schedule="constant"
    )
    constraint = cfg.to_atmc(["1"]).constraint
    assert (constraint.allocation, constraint.schedule) == ("magnitude", "constant")
    path = tmp_path / "atmc.json"
    cfg.to_json_file(str(path))
    assert ATMCQuantConfig.from_json_file(str(path)).to_atmc(["1"]) == cfg.to_atmc(["1"])
    defaults = ATMCQuantConfig(density=0.1).to_atmc(["1"]).constraint
    assert (defaults.allocation, defaults.schedule) == ("lamp", "cubic")
    q = quantize(
        _mlp(),
        {"atmc": {"bits": 8, "eps": 0.1, "steps": 1, "density": 0.2, "ramp_steps": 4}},
        run_fn=lambda m: _train(m, steps=6),
    )
    report = conversion_report(q).compression
    assert report.nnz <= report.budget
    with pytest.raises(ConfigError, match="allocation"):
        quantize(_mlp(), ATMCQuantConfig(allocation="size"), run_fn=_train)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"desnity": 0.1}, "no setting 'desnity'.*density"),
        ({"density": 2.0}, r"density = 2\.0"),
        ({"density": -1}, "density = -1"),
        ({"density": 0}, "density = 0"),
        ({"eps": -0.1}, "eps"),
        ({"steps": 0}, "steps"),
        ({"ramp_steps": -3}, "ramp_steps"),
        ({"group_size": 0}, "group_size"),
    ],
)
def test_every_value_is_checked_before_any_work(settings, match) -> None:
    """INC builds configs with cls(**dict): typos and bad values must not pass silently."""
    with pytest.raises(ConfigError, match=match):
        ATMCQuantConfig.from_dict(settings).validate()


def test_an_inc_atmc_recipe_with_a_bad_value_fails_before_training(tmp_path) -> None:
    from atmc_plugin.app.cli import main

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        "[data]\ntrain_limit = 64\ntest_limit = 16\n[model]\nname = 'mlp'\nhidden = [8]\n"
        "[train]\npretrain_epochs = 1\ncompress_epochs = 1\nfinetune_epochs = 0\n"
        "[inc.atmc]\nbits = 8\ndesnity = 0.1\n"
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_rtn_ships_convolutions_in_fp32_and_the_report_counts_them_so(caplog) -> None:
    torch.manual_seed(0)
    cfg = ATMCQuantConfig(bits=4, group_size=16, eps=0.1, steps=1, density=0.5, total_steps=6)
    with caplog.at_level(logging.INFO, logger="atmc_plugin_adapters.inc.algorithm"):
        q = quantize(_SmallCNN(), cfg, run_fn=_train)
    assert "packs nn.Linear only" in caplog.text and "['conv']" in caplog.text
    assert type(q.fc).__name__ == "INCWeightOnlyLinear" and isinstance(q.conv, nn.Conv2d)
    session = session_of(q)
    assert session.op_names == ["fc"] and session.left_fp32 == ["conv"]
    report = conversion_report(q).compression
    bits = {t.name: t.bits for t in report.tensors}
    assert bits == {"fc.weight": 4, "conv.weight": 32}
    conv = next(t for t in report.tensors if t.name == "conv.weight")
    assert conv.nnz == int(torch.count_nonzero(q.conv.weight))  # dense: not in the budget
    assert report.dense_numel == q.conv.weight.numel() + 10 * 8 * 64


def test_rtn_with_no_linear_to_pack_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    with pytest.raises(ConfigError, match=r'packs nn.Linear layers only.*backend = "pt2e"'):
        prepare(model, ATMCQuantConfig(bits=4))


def test_incs_attack_setting_takes_the_fast_preset() -> None:
    attack = ATMCQuantConfig(bits=8, attack="fast", eps=0.05).to_atmc(["1"]).attack
    assert attack == AttackConfig(name="nfgsm", eps=0.05)
    standard = ATMCQuantConfig(bits=8, attack="standard", eps=0.05).to_atmc(["1"]).attack
    assert standard is not None and (standard.name, standard.steps) == ("pgd", 7)
