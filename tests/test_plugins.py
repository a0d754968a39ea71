from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pluggy
import pytest
import torch

import atmc_plugin
from atmc_plugin import ATMC, ATMCConfig, AttackConfig, PluginError, hookspecs
from atmc_plugin.plugins import BLOCK_ENV_VAR, get_plugin_manager, plugin_origins

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = ROOT / "examples" / "plugins" / "atmc-mifgsm"


def _hook_specs() -> dict[str, list[str]]:
    return {
        name: list(inspect.signature(fn).parameters)
        for name, fn in vars(hookspecs).items()
        if name.startswith("atmc_") and callable(fn)
    }


def test_every_hook_documented_with_exact_signature() -> None:
    doc = (ROOT / "docs" / "hooks.md").read_text()
    headings = dict(re.findall(r"^### (atmc_\w+)\(([^)]*)\)$", doc, flags=re.M))
    specs = _hook_specs()
    assert specs, "no hook specs found"
    for name, params in specs.items():
        assert name in headings, f"hook {name} is not documented in docs/hooks.md"
        documented = [p.strip() for p in headings[name].split(",") if p.strip()]
        assert documented == params, f"{name}: docs say {documented}, spec says {params}"
    assert set(headings) <= set(specs), (
        f"docs describe hooks that do not exist: {set(headings) - set(specs)}"
    )


def test_factory_is_fresh_and_registers_builtins() -> None:
    a, b = get_plugin_manager(), get_plugin_manager()
    assert a is not b
    assert a.has_plugin("atmc.attacks") and a.has_plugin("atmc.projection")
    assert plugin_origins(a)["atmc.attacks"] == "built-in"


def test_blocking_by_environment(monkeypatch) -> None:
    monkeypatch.setenv(BLOCK_ENV_VAR, "atmc.attacks, someone.else")
    pm = get_plugin_manager()
    assert not pm.has_plugin("atmc.attacks")
    assert pm.is_blocked("someone.else")
    assert pm.hook.atmc_attack_names() == []


def test_misspelled_hook_fails_loudly(tmp_path, monkeypatch) -> None:
    module = tmp_path / "atmc_typo_plugin.py"
    module.write_text(
        "import atmc_plugin\n"
        "@atmc_plugin.hookimpl\n"
        "def atmc_biuld_attack(model, config):\n"
        "    return None\n"
    )
    _fake_distribution(tmp_path, "atmc-typo", "typo", "atmc_typo_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(pluggy.PluginValidationError, match="atmc_biuld_attack"):
        get_plugin_manager()


def _fake_distribution(root: Path, dist: str, ep_name: str, module: str) -> None:
    """An installed-distribution record (dist-info) declaring an atmc_plugin entry point."""
    info = root / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[atmc_plugin]\n{ep_name} = {module}\n")


def _mifgsm_config() -> ATMCConfig:
    return ATMCConfig(attack=AttackConfig(name="mifgsm", eps=0.1, steps=3, options={"decay": 1.0}))


def test_example_plugin_via_entry_point(tmp_path, monkeypatch, tiny_model, batch) -> None:
    _fake_distribution(tmp_path, "atmc-mifgsm", "mifgsm", "atmc_example_mifgsm")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    pm = get_plugin_manager()
    assert pm.has_plugin("mifgsm")
    assert plugin_origins(pm)["mifgsm"] == "atmc-mifgsm 0.1.0"
    assert "mifgsm" in {n for names in pm.hook.atmc_attack_names() for n in names}
    atmc = ATMC(tiny_model, _mifgsm_config(), plugin_manager=pm)
    x, y = batch
    adv = atmc.perturb(x, y)
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6 and not torch.equal(adv, x)
    tiny_model.eval()
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy
        assert ce(tiny_model(adv), y) > ce(tiny_model(x), y)
    # Blocking the entry point by name removes it again.
    monkeypatch.setenv(BLOCK_ENV_VAR, "mifgsm")
    with pytest.raises(PluginError, match="no installed plugin provides this attack"):
        ATMC(tiny_model, _mifgsm_config(), plugin_manager=get_plugin_manager())


def test_plugin_registered_by_hand(monkeypatch, tiny_model, batch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    import atmc_example_mifgsm

    pm = get_plugin_manager(entry_points=False)
    pm.register(atmc_example_mifgsm, name="mifgsm")
    try:
        atmc = ATMC(tiny_model, _mifgsm_config(), plugin_manager=pm)
        assert atmc.perturb(*batch).shape == batch[0].shape
    finally:
        pm.unregister(name="mifgsm")
        sys.modules.pop("atmc_example_mifgsm", None)


def test_wrap_without_adapter_lists_installed() -> None:
    with pytest.raises(
        PluginError, match=r"no installed adapter recognises builtins\.object"
    ) as info:
        atmc_plugin.wrap(object())
    assert "atmc_build_adapter" in str(info.value)


def test_wrap_uses_adapter_plugin() -> None:
    class Adapter:
        @atmc_plugin.hookimpl
        def atmc_build_adapter(self, target, config, options):
            return ("wrapped", target, options) if isinstance(target, list) else None

    pm = get_plugin_manager(entry_points=False)
    pm.register(Adapter(), name="list-adapter")
    assert atmc_plugin.wrap([1], plugin_manager=pm, optimizer=3) == (
        "wrapped",
        [1],
        {"optimizer": 3, "plugin_manager": pm},  # the adapter builds ATMC with the same plugins
    )
    with pytest.raises(PluginError, match="Installed adapters: list-adapter"):
        atmc_plugin.wrap(object(), plugin_manager=pm)


def test_import_has_no_side_effects() -> None:
    import subprocess

    code = (
        "import sys, atmc_plugin; "
        "tools = ('torchattacks', 'torch_pruning', 'neural_compressor'); "
        "bad = [m for m in tools if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=3600
    )
    assert out.stdout.strip() == ""


def test_broken_plugin_named_with_escape_hatch(tmp_path, monkeypatch) -> None:
    (tmp_path / "atmc_broken_plugin.py").write_text("raise ImportError('needs foo >= 2')\n")
    _fake_distribution(tmp_path, "atmc-broken", "broken", "atmc_broken_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"needs foo >= 2.*ATMC_PLUGIN_BLOCK=<name>"):
        get_plugin_manager()
    monkeypatch.setenv(BLOCK_ENV_VAR, "broken")
    assert not get_plugin_manager().has_plugin("broken")


def test_default_manager_is_shared_and_follows_the_block_list(monkeypatch, tiny_model) -> None:
    from atmc_plugin import ATMC, default_plugin_manager

    first = default_plugin_manager()
    assert default_plugin_manager() is first
    assert ATMC(tiny_model).plugin_manager is first
    monkeypatch.setenv(BLOCK_ENV_VAR, "atmc.attacks")
    blocked = default_plugin_manager()
    assert blocked is not first and not blocked.has_plugin("atmc.attacks")


def test_deepcopy_of_atmc_shares_the_plugin_manager(tiny_model, batch) -> None:
    import copy

    atmc = ATMC(tiny_model, ATMCConfig())
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    atmc.attach(opt)
    twin = copy.deepcopy(atmc)
    assert twin.plugin_manager is atmc.plugin_manager
    assert twin.module is not atmc.module and twin.optimizer is None
    assert atmc.optimizer is opt
    x, y = batch
    assert twin.perturb(x, y).shape == x.shape


def test_plain_atmc_loads_the_adapters_without_their_tools() -> None:
    """Loading the entry points (both adapters) imports neither INC nor Torch-Pruning."""
    import subprocess

    code = (
        "import sys, torch, atmc_plugin; "
        "pm = atmc_plugin.default_plugin_manager(); "
        "atmc_plugin.ATMC(torch.nn.Linear(4, 2)); "
        "assert pm.has_plugin('inc') and pm.has_plugin('torch_pruning'), pm.list_name_plugin(); "
        "print(','.join(m for m in ('neural_compressor', 'torch_pruning') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=3600
    )
    assert out.stdout.strip() == ""
