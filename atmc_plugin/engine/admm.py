"""ADMM state for the quantization constraint, keyed by parameter name.

For each compressed tensor ``W`` the state holds ``Z`` (the feasible, quantized copy) and ``U``
(the scaled dual). The augmented term added to the training loss is
``rho / 2 * sum ||W - Z + U||^2`` with ``Z`` and ``U`` constants; every ``interval`` steps
``Z <- Proj(W + U)`` and ``U <- U + W - Z``. Keys are parameter names (never attributes on
the user's modules), so state survives parameter objects being replaced, and can be sliced
when channels are removed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

Projector = Callable[[str, Tensor], Tensor]


class ADMMState:
    """Per-tensor ``Z`` and ``U`` plus ``rho``.

    :param rho: penalty weight.
    """

    def __init__(self, rho: float) -> None:
        self.rho = float(rho)
        self.z: dict[str, Tensor] = {}
        self.u: dict[str, Tensor] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.z

    def init(self, params: Mapping[str, Tensor], project: Projector) -> None:
        """``Z = Proj(W)``, ``U = 0`` for every tensor."""
        with torch.no_grad():
            for name, w in params.items():
                self.z[name] = project(name, w.detach()).clone()
                self.u[name] = torch.zeros_like(w, memory_format=torch.contiguous_format)

    def penalty(self, params: Mapping[str, Tensor]) -> Tensor:
        """``rho / 2 * sum ||W - Z + U||^2`` (differentiable in ``W`` only)."""
        terms = [
            (w - self.z[name] + self.u[name]).pow(2).sum()
            for name, w in params.items()
            if name in self.z
        ]
        if not terms:
            device = next(iter(params.values())).device if params else None
            return torch.zeros((), device=device)
        return 0.5 * self.rho * torch.stack(terms).sum()

    def update(self, params: Mapping[str, Tensor], project: Projector) -> dict[str, float]:
        """One ``Z``/``U`` update; returns primal and dual residuals."""
        primal = 0.0
        dual = 0.0
        with torch.no_grad():
            for name, w in params.items():
                w = w.detach()
                z_new = project(name, w + self.u[name])
                dual += float((z_new - self.z[name]).pow(2).sum())
                self.u[name] += w - z_new
                primal += float((w - z_new).pow(2).sum())
                self.z[name] = z_new
        return {"primal_residual": primal**0.5, "dual_residual": self.rho * dual**0.5}

    def index_select(self, name: str, dim: int, index: Tensor) -> None:
        """Keep only ``index`` along ``dim`` of ``name``'s state (after channel removal)."""
        for store in (self.z, self.u):
            store[name] = store[name].index_select(dim, index.to(store[name].device)).contiguous()

    def rename(self, old: str, new: str) -> None:
        for store in (self.z, self.u):
            store[new] = store.pop(old)

    def to(self, device: torch.device) -> None:
        for store in (self.z, self.u):
            for k, v in store.items():
                store[k] = v.to(device)

    def state_dict(self) -> dict[str, object]:
        return {"rho": self.rho, "z": dict(self.z), "u": dict(self.u)}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        z, u = state["z"], state["u"]
        if not isinstance(z, Mapping) or not isinstance(u, Mapping) or set(z) != set(u):
            raise ValueError("ADMM state must hold matching 'z' and 'u' tables of tensors")
        self.rho = float(state["rho"])  # type: ignore[arg-type]
        self.z = {k: v.clone() for k, v in z.items()}
        self.u = {k: v.clone() for k, v in u.items()}
