"""What the wrapper hands out in place of Torch-Pruning's own objects, and what it expects of
an importance: groups and a dependency graph whose pruning goes through the wrapper (so the
optimizer and ATMC state follow every structural change), and the importance protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from . import slicing

if TYPE_CHECKING:
    from .pruner import ATMCPruner


@runtime_checkable
class PrunerAwareImportance(Protocol):
    """An ``importance=`` that works with the wrapper (``ADMMProxyImportance``,
    ``RobustTaylorImportance``): the wrapper calls these three methods; an importance without
    them (Torch-Pruning's own) is used as it is."""

    def bind(self, owner: ATMCPruner) -> None:
        """Attach to the wrapped pruner (at ``wrap``)."""

    def prepare(self) -> None:
        """Right before each pruning step."""

    def follow(self, change: slicing.ParamChange) -> None:
        """After Torch-Pruning replaced a parameter."""


class TrackedGroup:
    """A Torch-Pruning group whose ``prune()`` also slices the optimizer and ATMC state."""

    def __init__(self, group: Any, owner: ATMCPruner) -> None:
        self._group = group
        self._owner = owner

    def __iter__(self) -> Iterator[Any]:
        return iter(self._group)

    def __len__(self) -> int:
        return len(self._group)

    def __getitem__(self, index: int) -> Any:
        return self._group[index]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._group, name)

    def __repr__(self) -> str:
        return repr(self._group)

    def prune(self, *args: Any, **kwargs: Any) -> None:
        self._owner._prune_group(self._group, *args, **kwargs)


class TrackedGraph:
    """A Torch-Pruning ``DependencyGraph`` whose groups prune through the wrapper."""

    def __init__(self, graph: Any, owner: ATMCPruner) -> None:
        self._graph = graph
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._graph, name)

    def get_pruning_group(self, *args: Any, **kwargs: Any) -> TrackedGroup:
        return TrackedGroup(self._graph.get_pruning_group(*args, **kwargs), self._owner)

    def get_all_groups(self, *args: Any, **kwargs: Any) -> Iterator[TrackedGroup]:
        for group in self._graph.get_all_groups(*args, **kwargs):
            yield TrackedGroup(group, self._owner)

    def load_pruning_history(self, pruning_history: Any) -> None:
        self._owner.load_pruning_history(pruning_history)
