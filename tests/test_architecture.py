"""The direction of imports (docs/architecture.md): the library imports neither the command
(``atmc_plugin.app``) nor an adapter (``atmc_plugin_adapters``), nor the tools they wrap."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "atmc_plugin"
FORBIDDEN = ("atmc_plugin.app", "atmc_plugin_adapters", "torch_pruning", "neural_compressor")


def _imports(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


def _library_files() -> list[Path]:
    return [p for p in LIBRARY.rglob("*.py") if "app" not in p.relative_to(LIBRARY).parts]


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_module_imports_no_command_adapter_or_tool(path: Path) -> None:
    bad = [n for n in _imports(path) if n.startswith(FORBIDDEN)]
    if path.name == "__main__.py":  # `python -m atmc_plugin` is the command's door
        bad = [n for n in bad if not n.startswith("atmc_plugin.app.cli")]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_check_sees_relative_imports() -> None:
    assert "atmc_plugin.app.job" in _imports(LIBRARY / "app" / "cli.py")
    assert "atmc_plugin.config" in _imports(LIBRARY / "app" / "recipe.py")


@pytest.mark.parametrize(
    "path", sorted((LIBRARY / "app").glob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_command_reaches_tools_only_through_plugins(path: Path) -> None:
    tools = ("atmc_plugin_adapters", "torch_pruning", "neural_compressor")
    bad = [n for n in _imports(path) if n.startswith(tools)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


TP_RECIPE = (
    "[model]\nname = 'digits_cnn'\nwidth = 4\n[data]\ntrain_limit = 32\ntest_limit = 8\n"
    "[torch_pruning]\npruner = 'MagnitudePruner'\nimportance = 'GroupMagnitudeImportance'\n"
)


def test_a_section_no_plugin_handles_is_refused(tmp_path: Path) -> None:
    import torch

    from atmc_plugin import get_plugin_manager
    from atmc_plugin.app.backends import resolve_tools
    from atmc_plugin.app.recipe import RecipeError, load_recipe

    (tmp_path / "r.toml").write_text(TP_RECIPE)
    recipe = load_recipe(tmp_path / "r.toml")
    bare = get_plugin_manager(entry_points=False)
    with pytest.raises(RecipeError, match=r"no installed plugin handles the \[torch_pruning\]"):
        resolve_tools(recipe, torch.zeros(1, 1, 8, 8), bare)


def test_a_plugin_backend_replaces_the_adapter(tmp_path: Path) -> None:
    """`atmc run` drives whatever backend the hook returns: a third tool needs no change to the
    command. Here a plugin takes over [torch_pruning] with plain ATMC and records its calls."""

    import json

    import atmc_plugin
    from atmc_plugin import get_plugin_manager
    from atmc_plugin.app.backends import PlainBackend
    from atmc_plugin.app.job import run_recipe
    from atmc_plugin.app.recipe import load_recipe

    calls: list[str] = []

    class Recording(PlainBackend):
        section = "torch_pruning"

        def on_epoch(self, epoch: int, epochs: int) -> None:
            calls.append(f"epoch {epoch}/{epochs}")

        def finalize(self, model):
            calls.append("finalize")
            return super().finalize(model)

    class Plugin:
        @atmc_plugin.hookimpl
        def atmc_command_backend(self, section, settings, context):
            return Recording(context) if section == "torch_pruning" else None

    recipe = (ROOT / "tests" / "recipes" / "tiny_tp.toml").read_text()
    recipe = recipe.replace("compress_epochs = 3", "compress_epochs = 2")
    recipe = recipe.replace("finetune_epochs = 2", "finetune_epochs = 1")
    recipe = recipe.replace("pretrain_epochs = 2", "pretrain_epochs = 1")
    (tmp_path / "r.toml").write_text(recipe)
    pm = get_plugin_manager()  # this test's own manager: the process's is left alone
    pm.register(Plugin(), name="recording")  # registered last: asked first
    run_recipe(load_recipe(tmp_path / "r.toml"), tmp_path / "o", plugin_manager=pm)
    assert "recording" not in [
        n for n, _ in atmc_plugin.default_plugin_manager().list_name_plugin()
    ]
    assert calls == ["epoch 0/2", "epoch 1/2", "epoch 2/2", "finalize"]
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["size"]["compression"]["budget"] > 0  # plain ATMC's report, not a pruner's
    assert "channels" not in results["size"]["compression"]


def test_every_subprocess_run_in_the_tests_has_a_hang_guard() -> None:
    """A hung child must fail its test, not the whole CI job: ``subprocess.run`` with timeout=."""

    missing = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "run"
                and getattr(node.func.value, "id", None) == "subprocess"
                and not any(k.arg == "timeout" for k in node.keywords)
            ):
                missing.append(f"{path.name}:{node.lineno}")
    assert not missing, f"subprocess.run without timeout= at {missing}"


def test_a_run_builds_its_model_and_its_tools_once(tmp_path: Path, monkeypatch) -> None:
    """The plan builds the model and resolves the tools; training, evaluation, the dense
    reference and shipping use copies and the same backend objects."""
    from atmc_plugin.app import plan
    from atmc_plugin.app.job import run_recipe
    from atmc_plugin.app.recipe import load_recipe

    counts = {"build_model": 0, "resolve_tools": 0}

    def counting(name):
        original = getattr(plan, name)

        def wrapper(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)

        return wrapper

    for name in counts:
        monkeypatch.setattr(plan, name, counting(name))
    recipe = (ROOT / "tests" / "recipes" / "tiny_tp.toml").read_text()
    recipe = recipe.replace("compress_epochs = 3", "compress_epochs = 2")
    recipe = recipe.replace("finetune_epochs = 2", "finetune_epochs = 1")
    (tmp_path / "r.toml").write_text(recipe)
    run_recipe(load_recipe(tmp_path / "r.toml"), tmp_path / "o")
    assert counts == {"build_model": 1, "resolve_tools": 1}


def test_a_plugin_adds_a_recipe_section_without_touching_the_command(tmp_path: Path) -> None:
    """A third tool: its plugin declares a section, validates it with the library's Settings
    (errors name the file, key, value and fix), and the command runs it. Nothing in app/
    knows the name ``mytool``."""
    import atmc_plugin
    from atmc_plugin import ConfigError, get_plugin_manager
    from atmc_plugin.app.backends import PlainBackend
    from atmc_plugin.app.job import run_recipe
    from atmc_plugin.app.recipe import RecipeError, load_recipe
    from atmc_plugin.settings import Settings

    seen: list[float] = []

    class MyTool(PlainBackend):
        section = "mytool"

        def __init__(self, settings, context) -> None:
            s = Settings("mytool", settings, keys=("strength",))
            seen.append(s.number("strength", 1.0, high=10.0))
            super().__init__(context)

    class Plugin:
        @atmc_plugin.hookimpl
        def atmc_command_sections(self):
            return ["mytool"]

        @atmc_plugin.hookimpl
        def atmc_command_backend(self, section, settings, context):
            return MyTool(settings, context) if section == "mytool" else None

    pm = get_plugin_manager()
    pm.register(Plugin(), name="mytool")
    base = (ROOT / "tests" / "recipes" / "tiny_tp.toml").read_text()
    base = base[: base.index("[torch_pruning]")] + base[base.index("[atmc.attack]") :]
    base = base.replace("compress_epochs = 3", "compress_epochs = 1")
    base = base.replace("finetune_epochs = 2", "finetune_epochs = 1")
    (tmp_path / "bad.toml").write_text(base + "\n[mytool]\nstrenght = 2\n")
    with pytest.raises(RecipeError, match=r"bad\.toml: \[mytool\] has an unknown key 'strenght'"):
        run_recipe(load_recipe(tmp_path / "bad.toml"), tmp_path / "o1", plugin_manager=pm)
    (tmp_path / "r.toml").write_text(base + "\n[mytool]\nstrength = 2.5\n")
    run_recipe(load_recipe(tmp_path / "r.toml"), tmp_path / "o2", plugin_manager=pm)
    assert seen[-1] == 2.5 and (tmp_path / "o2" / "results.json").is_file()
    assert issubclass(RecipeError, ConfigError)
