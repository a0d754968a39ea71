from __future__ import annotations

import json

import pytest

from atmc_plugin import ADMMConfig, ATMCConfig, AttackConfig, ConfigError, ConstraintConfig

FULL = {
    "attack": {"name": "pgd", "eps": 0.1, "steps": 7, "alpha": 0.025, "random_start": True},
    "constraint": {"density": 0.01, "bits": 8, "quantizer": "codebook", "factorize": False},
    "admm": {"rho": 0.1, "interval": 10},
}


def test_dict_round_trip() -> None:
    cfg = ATMCConfig.from_dict(FULL)
    assert cfg.attack is not None and cfg.attack.alpha == 0.025
    assert cfg.constraint.density == 0.01 and cfg.constraint.bits == 8
    again = ATMCConfig.from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize(
    "cfg",
    [
        ATMCConfig(),
        ATMCConfig(attack=None),
        ATMCConfig(
            constraint=ConstraintConfig(
                nnz=100,
                bits=4,
                quantizer="int",
                symmetric=False,
                granularity="group",
                group_size=32,
                scale_rule="pt2e",
                include=("conv*",),
                exclude=("fc",),
            ),
            attack=AttackConfig(name="tpgd", eps=0.03, mean=(0.5,), std=(0.25,)),
            admm=ADMMConfig(rho=1.0, interval=3, projection_interval=2),
        ),
    ],
)
def test_json_and_toml_round_trip(cfg: ATMCConfig, tmp_path) -> None:
    path = tmp_path / "c.json"
    cfg.to_json(path)
    assert ATMCConfig.from_file(path) == cfg
    toml = tmp_path / "recipe.toml"
    lines = ["[model]", 'name = "x"', "[atmc]"]
    data = cfg.to_dict()
    if data.get("attack") is False:
        lines.append("attack = false")
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        lines.append(f"[atmc.{section}]")
        for k, v in values.items():
            if v is None:
                continue
            lines.append(f"{k} = {json.dumps(v) if not isinstance(v, dict) else '{}'}")
    toml.write_text("\n".join(lines))
    assert ATMCConfig.from_file(toml) == cfg


def test_attack_can_be_disabled_in_dicts() -> None:
    assert ATMCConfig.from_dict({"attack": False}).attack is None


def test_configs_are_frozen() -> None:
    cfg = ATMCConfig()
    with pytest.raises(AttributeError):
        cfg.admm = ADMMConfig()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"density": 0.0}, "constraint.density = 0.0"),
        ({"density": 1.5}, "must lie in (0.0, 1.0]"),
        ({"bits": 0}, "constraint.bits = 0"),
        ({"bits": 17}, "must lie in [1, 16]"),
        ({"bits": 2.5}, "expected an integer"),
        ({"quantizer": "kmeans"}, "choose one of codebook, int"),
        ({"quantizer": "in"}, "Did you mean 'int'?"),
        ({"density": 0.1, "nnz": 5}, "give one budget, not both"),
        ({"granularity": "channel"}, "codebook quantizer is per tensor"),
        ({"quantizer": "int", "granularity": "group"}, "set group_size"),
        ({"quantizer": "int", "group_size": 8}, 'only valid with granularity = "group"'),
        ({"quantizer": "int", "bits": 1}, "symmetric integer grid needs bits >= 2"),
        ({"include": "conv1"}, "expected a list of module-name patterns"),
        ({"factorize": "yes"}, "expected true or false"),
    ],
)
def test_constraint_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        ConstraintConfig(**kwargs)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"eps": -0.1}, "attack.eps = -0.1"),
        ({"eps": 0.0}, "must lie in (0.0, 1.0]"),
        ({"eps": 1e300}, "pixels in [0, 1]"),
        ({"eps": 8}, "8/255 = 0.0314"),
        ({"steps": 0}, "attack.steps = 0"),
        ({"alpha": -1.0}, "attack.alpha = -1.0"),
        ({"name": "apgd"}, "for evaluation only"),
        ({"name": "square"}, "reseeds the global random number generator"),
        ({"name": ""}, "give an attack name"),
        ({"mean": (0.5,)}, "give both mean and std"),
        ({"mean": (0.5,), "std": (0.0,)}, "attack.std = 0.0"),
        ({"mean": (0.5, 0.5), "std": (0.2,)}, "one value per channel"),
        ({"eps": float("nan")}, "finite"),
    ],
)
def test_attack_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        AttackConfig(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"rho": 0}, "admm.rho = 0"),
        ({"interval": 0}, "admm.interval = 0"),
        ({"projection_interval": -1}, "admm.projection_interval = -1"),
    ],
)
def test_admm_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        ADMMConfig(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"atack": {}}, "unknown key 'atack'. Did you mean 'attack'?"),
        ({"attack": {"epsilon": 0.1}}, "[atmc.attack] has an unknown key 'epsilon'"),
        ({"constraint": {"bit": 8}}, "Did you mean 'bits'?"),
        ({"admm": {"rho": 0.1, "every": 3}}, "unknown key 'every'"),
        ({"admm": [1, 2]}, "[atmc.admm] must be a table"),
        ({"version": 99}, "version = 99 is not supported"),
    ],
)
def test_dict_errors(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        ATMCConfig.from_dict(data)
    assert fragment in str(info.value)


def test_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ATMCConfig.from_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[atmc.constraint]\nbits = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        ATMCConfig.from_file(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[atmc.constraint]\ndensity = 2.0\n")
    with pytest.raises(ConfigError, match=r"wrong\.toml: constraint\.density = 2\.0"):
        ATMCConfig.from_file(wrong)
    yaml = tmp_path / "c.yaml"
    yaml.write_text("x: 1")
    with pytest.raises(ConfigError, match=r"use \.toml or \.json"):
        ATMCConfig.from_file(yaml)


def test_layer_filter_is_not_serialized() -> None:
    cfg = ATMCConfig(constraint=ConstraintConfig(layer_filter=lambda m, n: True))
    with pytest.raises(ConfigError, match="cannot be serialized"):
        cfg.to_dict()


def test_default_step_sizes() -> None:
    assert AttackConfig(eps=0.1, steps=10).step_size == pytest.approx(0.025)
    assert AttackConfig(name="ffgsm", eps=0.1).step_size == pytest.approx(0.125)
