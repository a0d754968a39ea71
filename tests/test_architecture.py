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
