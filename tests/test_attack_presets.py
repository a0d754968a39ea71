"""The named training attacks: ``fast`` (N-FGSM, guarded) and ``standard`` (PGD-7)."""

from __future__ import annotations

import pytest

from atmc_plugin import ATMCConfig, AttackConfig, ConfigError, GuardConfig
from atmc_plugin.config import ATTACK_PRESETS
from atmc_plugin.guard import guard_wanted


def test_fast_is_nfgsm_with_the_papers_settings_and_the_guard_on() -> None:
    fast = AttackConfig.preset("fast", eps=0.1)
    assert fast == AttackConfig(name="nfgsm", eps=0.1)
    assert fast.step_size == pytest.approx(0.1) and fast.noise_magnitude == pytest.approx(0.2)
    assert guard_wanted(GuardConfig(), fast)


def test_standard_is_pgd7_and_unguarded() -> None:
    standard = AttackConfig.preset("Standard", eps=0.1)
    assert (standard.name, standard.steps) == ("pgd", 7)
    assert not guard_wanted(GuardConfig(), standard)
    assert AttackConfig.preset("standard", eps=0.1, steps=10).steps == 10  # settings win


def test_a_preset_and_a_name_together_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"attack\.name = 'pgd'.*name or preset, not both"):
        AttackConfig.preset("fast", name="pgd", eps=0.1)


def test_an_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"attack\.preset = 'quick'.*fast, standard"):
        AttackConfig.preset("quick", eps=0.1)


def test_dict_and_json_configs_take_a_preset_and_write_the_attack_it_chose() -> None:
    config = ATMCConfig.from_dict({"attack": {"preset": "fast", "eps": 0.05}})
    assert config.attack == AttackConfig(name="nfgsm", eps=0.05)
    written = config.to_dict()["attack"]
    assert written["name"] == "nfgsm" and "preset" not in written
    assert ATMCConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="not both"):
        ATMCConfig.from_dict({"attack": {"preset": "fast", "name": "ffgsm"}})


def test_the_presets_name_training_attacks() -> None:
    for name in ATTACK_PRESETS:
        assert AttackConfig.preset(name).name in ("pgd", "nfgsm")
