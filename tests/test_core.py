from __future__ import annotations

import io

import pytest
import torch
from torch.nn import functional as F

import atmc_plugin
from atmc_plugin import (
    ATMC,
    ADMMConfig,
    ATMCConfig,
    AttackConfig,
    ConfigError,
    ConstraintConfig,
    InputError,
)
from atmc_plugin.plugins import get_plugin_manager


def _config(**constraint) -> ATMCConfig:
    constraint.setdefault("ramp_steps", 2)  # the unit tests' loops are a few steps long
    return ATMCConfig(
        attack=AttackConfig(eps=0.1, steps=2),
        constraint=ConstraintConfig(**constraint),
        admm=ADMMConfig(interval=2),
    )


def _train(model, atmc, opt, batch, steps=4) -> None:
    x, y = batch
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(atmc.perturb(x, y)), y) + atmc.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("quantizer", ["codebook", "int"])
def test_training_loop_keeps_budget_and_finalize_quantizes(tiny_model, batch, quantizer) -> None:
    cfg = _config(density=0.2, bits=3, quantizer=quantizer, ramp_steps=200)
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.05, momentum=0.9)
    atmc = ATMC(tiny_model, cfg, optimizer=opt)
    _train(tiny_model, atmc, opt, batch)
    rep = atmc.report()
    assert atmc.target_budget == round(0.2 * rep.dense_numel) < atmc.budget  # still annealing
    assert rep.nnz <= atmc.budget
    assert atmc.penalty().item() > 0
    jump = f"from {atmc.budget:,} to {atmc.target_budget:,} non-zeros.*ramp_steps = 200"
    with pytest.warns(atmc_plugin.ScheduleWarning, match=jump):
        final = atmc.finalize()
    assert final.nnz <= atmc.budget == atmc.target_budget
    for t in final.tensors:
        assert t.distinct <= 2**3
    assert final.size_ratio == pytest.approx(final.nnz * 3 / (32 * final.dense_numel))
    # Fine-tuning after finalize keeps the mask and the codebooks.
    before = {n: p.detach().clone() for n, p in atmc.parameters().items()}
    _train(tiny_model, atmc, opt, batch, steps=2)
    for name, p in atmc.parameters().items():
        assert torch.all(p[before[name] == 0] == 0)
        allowed = torch.unique(before[name])
        if quantizer == "codebook":
            assert torch.isin(p.detach(), allowed).all()
    assert atmc.penalty().item() == 0.0


def test_notifications_reach_plugins(tiny_model, batch) -> None:
    seen: list[tuple[str, int]] = []

    from atmc_plugin import hookimpl

    class Recorder:
        @hookimpl
        def atmc_after_projection(self, step, stats):
            seen.append(("projection", step))
            assert stats["nnz"] <= stats["budget"]

        @hookimpl
        def atmc_after_admm_update(self, step, stats):
            seen.append(("admm", step))
            assert stats["primal_residual"] >= 0

    pm = get_plugin_manager(entry_points=False)
    pm.register(Recorder(), name="recorder")
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.01)
    atmc = ATMC(tiny_model, _config(density=0.5, bits=4), optimizer=opt, plugin_manager=pm)
    _train(tiny_model, atmc, opt, batch, steps=4)
    assert [s for k, s in seen if k == "projection"] == [1, 2, 3, 4]
    assert [s for k, s in seen if k == "admm"] == [2, 4]


def test_state_dict_round_trip_weights_only(tiny_model, batch) -> None:
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.05)
    atmc = ATMC(tiny_model, _config(density=0.3, bits=2), optimizer=opt)
    _train(tiny_model, atmc, opt, batch, steps=3)
    atmc.finalize()
    buf = io.BytesIO()
    torch.save({"model": tiny_model.state_dict(), "atmc": atmc.state_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    from conftest import TinyCNN

    fresh = TinyCNN()
    fresh.load_state_dict(loaded["model"])
    other = ATMC(fresh, _config(density=0.3, bits=2))
    other.load_state_dict(loaded["atmc"])
    assert other.frozen and other.step_count == 3
    for name in atmc.names:
        assert torch.equal(atmc.admm.z[name], other.admm.z[name])
    assert str(other.report()) == str(atmc.report())


def test_load_state_dict_rejects_foreign(tiny_model) -> None:
    atmc = ATMC(tiny_model, _config(density=0.3, bits=2))
    with pytest.raises(InputError, match="not an ATMC state dict"):
        atmc.load_state_dict({"foo": 1})
    state = atmc.state_dict()
    state["names"] = ["other.weight"]
    with pytest.raises(InputError, match="build ATMC with the same model"):
        atmc.load_state_dict(state)


def test_nan_weights_refused_and_nothing_modified(tiny_model) -> None:
    atmc = ATMC(tiny_model, _config(density=0.1, bits=2))
    with torch.no_grad():
        tiny_model.conv2.weight[0, 0, 0, 0] = float("nan")
    snapshot = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with pytest.raises(InputError, match=r"'conv2.weight' contains NaN or inf at step 1"):
        atmc.after_optimizer_step()
    assert atmc.step_count == 0
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, snapshot[k]) or torch.allclose(v, snapshot[k], equal_nan=True)
    with pytest.raises(InputError, match=r"conv2\.weight"):
        ATMC(tiny_model, _config(density=0.1))


def test_layer_selection(tiny_model) -> None:
    atmc = ATMC(tiny_model, _config(density=0.5, include=("conv*",)))
    assert atmc.names == ["conv1.weight", "conv2.weight"]
    atmc = ATMC(tiny_model, _config(density=0.5, exclude=("fc",)))
    assert "fc.weight" not in atmc.names
    atmc = ATMC(tiny_model, _config(density=0.5, layer_filter=lambda m, n: n == "fc"))
    assert atmc.names == ["fc.weight"]
    with pytest.raises(ConfigError, match="select no Conv or Linear layer"):
        ATMC(tiny_model, _config(density=0.5, include=("nothing",)))


def test_absolute_budget(tiny_model) -> None:
    atmc = ATMC(tiny_model, _config(nnz=100, ramp_steps=10))
    atmc.project_sparsity()  # step 0 of the cubic anneal: still dense
    assert atmc.report().nnz == atmc.dense_numel
    atmc.project_sparsity(final=True)
    assert atmc.report().nnz == 100
    constant = ATMC(tiny_model, _config(nnz=50, schedule="constant"))
    constant.project_sparsity()
    assert constant.report().nnz == 50
    with pytest.raises(ConfigError, match="exceeds the"):
        ATMC(tiny_model, _config(nnz=10**9))


def test_optimizer_must_train_compressed_tensors(tiny_model) -> None:
    opt = torch.optim.SGD([tiny_model.fc.bias], lr=0.1)
    with pytest.raises(InputError, match="does not train"):
        ATMC(tiny_model, _config(density=0.5), optimizer=opt)


def test_factorized_training(tiny_model, batch) -> None:
    x, _ = batch
    tiny_model.eval()
    with torch.no_grad():
        before = tiny_model(x)
    atmc = ATMC(tiny_model, _config(density=0.3, bits=4, factorize=True))
    with torch.no_grad():
        assert torch.allclose(tiny_model(x), before, atol=1e-5)
    assert len(atmc.names) == 9 and all("parametrizations.weight.original" in n for n in atmc.names)
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.02)
    atmc.attach(opt)
    _train(tiny_model, atmc, opt, batch, steps=3)
    rep = atmc.finalize()
    assert rep.nnz <= atmc.budget
    assert rep.dense_numel == sum(
        m.weight.numel() for m in (tiny_model.conv1, tiny_model.conv2, tiny_model.fc)
    )


def test_clean_training_without_attack(tiny_model, batch) -> None:
    atmc = ATMC(tiny_model, ATMCConfig(attack=None))
    assert atmc.perturb(*batch) is batch[0]
    assert atmc.penalty().item() == 0.0


def test_ddp_wrapper_is_looked_through(tiny_model) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(tiny_model)
        atmc = ATMC(ddp, _config(density=0.5))
        assert atmc.names[0] == "conv1.weight"
    finally:
        dist.destroy_process_group()


def test_index_select_follows_channel_removal(tiny_model, batch) -> None:
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.05)
    atmc = ATMC(tiny_model, _config(density=0.5, bits=4), optimizer=opt)
    _train(tiny_model, atmc, opt, batch, steps=2)
    keep = torch.tensor([0, 2, 5])
    z_before = atmc.admm.z["conv2.weight"].clone()
    with torch.no_grad():
        tiny_model.conv2.weight = torch.nn.Parameter(tiny_model.conv2.weight[keep].clone())
    atmc.index_select("conv2.weight", 0, keep)
    assert torch.equal(atmc.admm.z["conv2.weight"], z_before[keep])
    assert atmc.penalty().item() >= 0  # shapes agree again
    with pytest.raises(InputError, match="is not compressed"):
        atmc.index_select("bn1.weight", 0, keep)


def test_frozen_grouped_grid_refuses_slicing(tiny_model) -> None:
    cfg = _config(density=0.5, bits=4, quantizer="int", granularity="group", group_size=4)
    atmc = ATMC(tiny_model, cfg)
    atmc.finalize()
    with pytest.raises(InputError, match=r"before atmc\.finalize"):
        atmc.index_select("conv2.weight", 1, torch.tensor([0, 1]))


def test_save_atomically_replaces_or_keeps(tmp_path) -> None:
    from atmc_plugin.io import save_atomically

    path = tmp_path / "ckpt.pt"
    save_atomically({"a": torch.ones(2)}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomically({"bad": Unsaveable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


@pytest.mark.parametrize("granularity", ["tensor", "group"])
def test_load_state_dict_follows_the_model_device(batch, granularity) -> None:
    """A state read with map_location="cpu" lands on the device of the (moved) model.

    The meta device stands in for CUDA here; tests/test_engine_gpu.py resumes on CUDA.
    """
    from tests.conftest import TinyCNN

    def config() -> ATMCConfig:
        group = {"group_size": 4} if granularity == "group" else {}
        return _config(density=0.5, bits=4, quantizer="int", granularity=granularity, **group)

    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    atmc = ATMC(model, config(), optimizer=opt)
    _train(model, atmc, opt, batch, steps=2)
    atmc.finalize()
    state = atmc.state_dict()
    assert atmc.qstates and atmc.masks
    twin = TinyCNN()
    resumed = ATMC(twin, config())
    twin.to("meta")
    resumed.load_state_dict(state)

    def leaves(value):
        if isinstance(value, (list, tuple)):
            return [t for v in value for t in leaves(v)]
        return [value]

    tensors = [*resumed.admm.z.values(), *resumed.admm.u.values(), *resumed.masks.values()]
    tensors += [t for q in resumed.qstates.values() for t in leaves(q)]
    assert len(tensors) > 6 and all(t.device.type == "meta" for t in tensors)
