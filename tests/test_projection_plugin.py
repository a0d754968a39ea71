"""A third-party projection replaces the built-in end to end: train, prune, resume, export.

Its quantization state is its own (a dict holding a per-tensor scale): ATMC must store, slice,
move and save it without reading it, and the compact export must fall back to float values.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch.nn import functional as F

import atmc_plugin
from atmc_plugin import ATMCConfig, AttackConfig, ConstraintConfig, InputError, hookimpl
from atmc_plugin.app.models import DigitsCNN
from atmc_plugin.export import load_compact, save_compact
from atmc_plugin.plugins import get_plugin_manager


class UniformPerLayer:
    """Equal density in every layer, symmetric uniform grid with one scale per tensor."""

    def __init__(self, bits: int) -> None:
        self.levels = 2 ** (bits - 1) - 1
        self.sliced: list[int] = []

    def sparsity_masks(self, tensors, budget):
        fraction = budget / sum(t.numel() for t in tensors)
        masks = []
        for t in tensors:
            keep = max(1, int(fraction * t.numel()))
            mask = torch.zeros(t.numel(), dtype=torch.bool, device=t.device)
            mask[t.detach().abs().flatten().topk(keep).indices] = True
            masks.append(mask.view_as(t))
        return masks, 0.0

    def quantize(self, tensor, mask):
        source = tensor if mask is None else tensor * mask
        scale = source.detach().abs().max().clamp_min(1e-12) / self.levels
        return self.snap(source, {"scale": scale}), {"scale": scale}

    def snap(self, tensor, qstate):
        scale = qstate["scale"]
        return (tensor / scale).round().clamp(-self.levels, self.levels) * scale

    def select_state(self, qstate, dim, index):
        self.sliced.append(dim)
        return qstate  # one scale per tensor: removing channels does not change it


def _setup(pm):
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    example = torch.rand(1, 1, 8, 8)
    pruner = tp.pruner.GroupNormPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.25,
        iterative_steps=1,
        ignored_layers=[model.fc],
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    config = ATMCConfig(
        attack=AttackConfig(eps=0.1, steps=2),
        constraint=ConstraintConfig(density=0.3, bits=4, schedule="constant"),
    )
    wrapped = atmc_plugin.wrap(
        pruner, config, optimizer=opt, example_inputs=example, plugin_manager=pm
    )
    return model, wrapped, opt


def _train(model, wrapped, opt, steps=3):
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        loss = F.cross_entropy(model(wrapped.perturb(x, y)), y) + wrapped.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_third_party_projection_end_to_end(tmp_path) -> None:
    projection = UniformPerLayer(bits=4)

    class Plugin:
        @hookimpl
        def atmc_build_projection(self, config):
            return projection

    pm = get_plugin_manager()
    pm.register(Plugin(), name="uniform")
    model, wrapped, opt = _setup(pm)
    assert wrapped.atmc.projection is projection
    _train(model, wrapped, opt)
    wrapped.step()
    _train(model, wrapped, opt)
    wrapped.finalize()
    conv = model.features[0]
    wrapped.manual_prune_width(conv, tp.prune_conv_out_channels, [0])  # after finalize
    assert 0 in projection.sliced  # the frozen set followed through the plugin
    _train(model, wrapped, opt)
    atmc = wrapped.atmc
    for name, p in atmc.parameters().items():  # still on the plugin's grids
        scale = atmc.qstates[name]["scale"]
        codes = p.detach() / scale
        assert torch.allclose(codes, codes.round(), atol=1e-4), name
        assert int((codes.abs() > projection.levels + 1e-4).sum()) == 0

    torch.save({"pruner": wrapped.state_dict(), "model": model.state_dict()}, tmp_path / "s.pt")
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    fresh_model, fresh, _opt = _setup(pm)
    fresh.load_state_dict(saved["pruner"])
    fresh_model.load_state_dict(saved["model"])
    assert {k: v["scale"] for k, v in fresh.atmc.qstates.items()} == {
        k: v["scale"] for k, v in atmc.qstates.items()
    }
    x = torch.rand(8, 1, 8, 8)
    model.eval()
    fresh_model.eval()
    assert torch.equal(model(x), fresh_model(x))

    save_compact(tmp_path / "m.safetensors", model, atmc)  # float values: not our codes
    restored, _wrapped, _ = _setup(pm)
    _wrapped.load_state_dict(saved["pruner"])  # the pruned structure
    restored.load_state_dict(load_compact(tmp_path / "m.safetensors"))
    restored.eval()
    assert torch.equal(model(x), restored(x))


def test_projection_without_select_state_refuses_pruning_after_finalize() -> None:
    class NoSlicing(UniformPerLayer):
        select_state = None  # type: ignore[assignment]

    class Plugin:
        @hookimpl
        def atmc_build_projection(self, config):
            return NoSlicing(bits=4)

    pm = get_plugin_manager()
    pm.register(Plugin(), name="no-slicing")
    model, wrapped, _opt = _setup(pm)
    wrapped.step()
    wrapped.finalize()
    try:
        wrapped.manual_prune_width(model.features[0], tp.prune_conv_out_channels, [0])
    except InputError as exc:
        assert "select_state" in str(exc)
    else:  # pragma: no cover - the refusal is the point
        raise AssertionError("pruning after finalize was not refused")
