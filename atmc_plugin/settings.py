"""Typed reads from a settings table, with errors that name the section, key, value and fix.

The one helper set for tables of settings: the ``atmc`` command's recipe sections and the
tool sections each adapter validates for itself (``[torch_pruning]``, ``[inc.atmc]`` ...)::

    s = Settings("torch_pruning", table, keys=("pruner", "pruning_ratio"))
    ratio = s.number("pruning_ratio", 0.5, high=0.99)
    # ConfigError: [torch_pruning] pruning_ratio = 1.5: expected a number in [0.0, 0.99].

The command prefixes the recipe file to every message (``recipe.toml: [torch_pruning] ...``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import ConfigError, did_you_mean

MAX_COUNT = 10**6  # epochs, batch sizes, limits: anything larger is a typo


class Settings:
    """One table of settings.

    :param section: its name, as written in brackets in messages.
    :param data: the table (``None``: empty).
    :param keys: the valid keys (unknown ones are refused with "did you mean"); ``None``: any.
    :param error: the exception type raised (``ConfigError`` or a subclass).
    :param where: prefix of every message (the command's recipe path, ``"recipe.toml: "``).
    """

    def __init__(
        self,
        section: str,
        data: Any,
        keys: Iterable[str] | None = None,
        *,
        error: Callable[[str], Exception] = ConfigError,
        where: str = "",
    ) -> None:
        self.name, self.where, self._error = section, where, error
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise self.error(section, data, f"[{section}] must be a table")
        self.data = dict(data)
        if keys is not None:
            valid = tuple(keys)
            for key in self.data:
                if key not in valid:
                    raise error(
                        f"{where}[{section}] has an unknown key {key!r}."
                        f"{did_you_mean(key, valid)} Valid keys: {', '.join(valid)}."
                    )

    def error(self, key: str, value: Any, fix: str) -> Exception:
        return self._error(f"{self.where}[{self.name}] {key} = {value!r}: {fix}.")

    def integer(self, key: str, default: int | None, low: int = 0, high: int = MAX_COUNT) -> Any:
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(key, value, f"expected an integer in [{low}, {high}]")
        return value

    def number(self, key: str, default: float, low: float = 0.0, high: float = math.inf) -> float:
        value = self.data.get(key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not low <= value <= high:
            bound = f"in [{low}, {high}]" if math.isfinite(high) else f">= {low}"
            raise self.error(key, value, f"expected a number {bound}")
        return float(value)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or value not in choices:
            hint = did_you_mean(value, choices) if isinstance(value, str) else ""
            raise self.error(key, value, f"choose one of {', '.join(choices)}.{hint}".rstrip("."))
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, value, "expected true or false")
        return value

    def string(self, key: str, default: str) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value:
            raise self.error(key, value, "expected a non-empty string")
        return value

    def strings(self, key: str) -> list[str]:
        """A list of strings (empty when the key is absent)."""
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, value, "expected a list of names")
        return value
