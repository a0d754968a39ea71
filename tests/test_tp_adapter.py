"""The Torch-Pruning adapter: wrap keeps the pruner's surface and ATMC follows every removal."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch_pruning as tp
from atmc_plugin_adapters.torchpruning import (
    RGSM,
    ADMMProxyImportance,
    ATMCPruner,
    RobustTaylorImportance,
    load_pruned,
    save_pruned,
)
from torch import nn
from torch.nn import functional as F
from tp_models import MobileBlockNet, TokenMLPBlock

import atmc_plugin
from atmc_plugin import ATMCConfig, ConfigError, ConstraintConfig, InputError
from atmc_plugin.app.models import CifarResNet, DigitsCNN

PRUNERS = [
    tp.pruner.BasePruner,
    tp.pruner.BNScalePruner,
    tp.pruner.GroupNormPruner,
    tp.pruner.GrowingRegPruner,
]
CFG = ATMCConfig.from_dict(
    {
        "attack": {"eps": 0.1, "steps": 2},
        "constraint": {"density": 0.1, "bits": 4},
        "admm": {"interval": 2},
    }
)


def _digits_setup(cls=tp.pruner.GroupNormPruner, importance=None, ratio=0.5, steps=2, **kw):
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    ex = torch.rand(1, 1, 8, 8)
    pruner = cls(
        model,
        ex,
        importance=importance or tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        iterative_steps=steps,
        ignored_layers=[model.fc],
        **kw,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, ex, pruner, opt


def _train(model, wrapped, opt, steps=2, regularize=None) -> None:
    g = torch.Generator().manual_seed(3)
    model.train()
    for _ in range(steps):
        x, y = (
            torch.rand(16, *_input_shape(model), generator=g),
            torch.randint(0, 10, (16,), generator=g),
        )
        loss = F.cross_entropy(model(wrapped.perturb(x, y)), y) + wrapped.penalty()
        opt.zero_grad()
        loss.backward()
        if regularize is not None:
            regularize(loss)
        opt.step()


def _input_shape(model) -> tuple[int, ...]:
    if isinstance(model, DigitsCNN):
        return (1, 8, 8)
    return (3, 8, 8) if not isinstance(model, CifarResNet) else (3, 16, 16)


def _assert_consistent(model, wrapped, opt) -> None:
    params = {id(p) for p in model.parameters()}
    for group in opt.param_groups:
        assert all(id(p) in params for p in group["params"]), "optimizer holds stale parameters"
    for p, state in opt.state.items():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim():
                assert value.shape == p.shape
    for name, p in wrapped.atmc.parameters().items():
        if name in wrapped.atmc.admm:
            assert wrapped.atmc.admm.z[name].shape == p.shape


@pytest.mark.parametrize("cls", PRUNERS)
def test_every_pruner_class_end_to_end(cls) -> None:
    model, ex, pruner, opt = _digits_setup(cls)
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt, example_inputs=ex)
    assert isinstance(wrapped, ATMCPruner)
    for _ in range(wrapped.iterative_steps):
        wrapped.step()
        if cls is tp.pruner.BasePruner:
            _train(model, wrapped, opt, regularize=lambda loss: wrapped.regularize(model, loss))
        else:
            _train(model, wrapped, opt, regularize=lambda loss: wrapped.regularize(model))
        _assert_consistent(model, wrapped, opt)
    report = wrapped.finalize()
    assert report.channel_ratio == pytest.approx(0.5, abs=0.05)
    assert report.elementwise.nnz <= wrapped.atmc.budget == wrapped.target_budget
    assert all(t.distinct <= 16 for t in report.elementwise.tensors)
    assert report.macs < report.dense_macs
    assert "channels" in str(report)


def test_surface_of_the_pruner_is_kept() -> None:
    model, _, pruner, opt = _digits_setup(tp.pruner.BNScalePruner)
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt)
    assert wrapped.DG.model is pruner.DG.model and wrapped.importance is pruner.importance
    assert wrapped.model is model and wrapped.iterative_steps == 2
    assert wrapped.current_step == 0
    wrapped.step()
    assert wrapped.current_step == 1 and pruner.current_step == 1
    assert wrapped.pruning_history() == pruner.pruning_history()
    wrapped.update_regularizer()
    model.train()
    F.cross_entropy(model(torch.rand(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    wrapped.regularize(model, reg=1e-4, bias=False)  # BNScalePruner's own signature


def test_interactive_step_and_modes_restored() -> None:
    model, _, pruner, opt = _digits_setup()
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt)
    model.train()
    model.features[1].eval()  # a frozen BatchNorm stays frozen through the step
    n = 0
    for group in wrapped.step(interactive=True):
        assert len(list(group)) > 0
        group.prune()
        n += 1
    assert n > 0 and model.training and not model.features[1].training
    _assert_consistent(model, wrapped, opt)


def test_atmc_off_removes_the_same_channels_as_the_bare_pruner() -> None:
    off = ATMCConfig(attack=None)
    histories = []
    for wrap in (False, True):
        _model, _, pruner, opt = _digits_setup(ratio=0.4, steps=2)
        target = atmc_plugin.wrap(pruner, off, optimizer=opt) if wrap else pruner
        for _ in range(2):
            target.step()
        histories.append(pruner.pruning_history())
    assert histories[0] == histories[1]


def test_adam_moments_are_sliced() -> None:
    model, _, pruner, _ = _digits_setup()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt)
    _train(model, wrapped, opt)
    w_before = model.features[0].weight.detach().clone()
    m_before = opt.state[model.features[0].weight]["exp_avg"].clone()
    wrapped.step()
    kept = [
        i
        for i in range(w_before.shape[0])
        if any(torch.equal(w_before[i], r) for r in model.features[0].weight.detach())
    ]
    assert opt.state[model.features[0].weight]["exp_avg"].shape[0] == len(kept)
    assert torch.equal(opt.state[model.features[0].weight]["exp_avg"], m_before[kept])
    _train(model, wrapped, opt)  # Adam keeps training every parameter


def test_budget_scheduled_with_the_steps() -> None:
    _model, _, pruner, opt = _digits_setup(steps=4)
    constant = ConstraintConfig(density=0.1, bits=4, schedule="constant")
    config = ATMCConfig(attack=CFG.attack, constraint=constant, admm=CFG.admm)
    wrapped = atmc_plugin.wrap(pruner, config, optimizer=opt)
    budgets = []
    for _ in range(4):
        wrapped.step()
        budgets.append(wrapped.atmc.budget)
    assert budgets == sorted(budgets, reverse=True) and budgets[0] < wrapped.dense_numel
    assert budgets[-1] == wrapped.target_budget == round(0.1 * wrapped.dense_numel)
    # the default (no ramp_steps, no total_steps) follows the pruner's steps alone
    _model, _, pruner, opt = _digits_setup(steps=4)
    default = atmc_plugin.wrap(pruner, CFG, optimizer=opt)
    default.step()
    assert default.atmc.budget == budgets[0]
    # with ATMC's own anneal the budget is the looser of the two schedules
    _model, _, pruner, opt = _digits_setup(steps=4)
    ramp = ConstraintConfig(density=0.1, bits=4, ramp_steps=200)
    own = ATMCConfig(attack=CFG.attack, constraint=ramp, admm=CFG.admm)
    annealed = atmc_plugin.wrap(pruner, own, optimizer=opt)
    annealed.step()
    assert annealed.atmc.budget == annealed.dense_numel > budgets[0]


def test_wrap_takes_the_loops_length_for_atmcs_own_anneal() -> None:
    _model, _, pruner, opt = _digits_setup(steps=2)
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt, total_steps=40)
    assert wrapped.atmc.total_steps == 40 and wrapped.atmc.ramp_steps == 20


def test_finalize_before_the_pruner_finished_warns_with_the_numbers() -> None:
    model, _, pruner, opt = _digits_setup(steps=4)
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt)
    wrapped.step()
    _train(model, wrapped, opt)
    budget, target = wrapped.atmc.budget, wrapped.target_budget
    match = rf"from {budget:,} to {target:,} non-zeros.*has taken 1 of its 4 iterative_steps"
    with pytest.warns(atmc_plugin.ScheduleWarning, match=match):
        wrapped.finalize()


def test_after_all_steps_finalize_is_no_jump_whatever_the_loop_length() -> None:
    model, _, pruner, opt = _digits_setup(steps=3)
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt)
    for _ in range(3):
        wrapped.step()
        _train(model, wrapped, opt, steps=1)  # a very short loop: one batch per step
    assert wrapped.atmc.budget == wrapped.target_budget
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrapped.finalize()


def test_wrap_leaves_the_model_in_training_mode_and_steps_keep_the_mode() -> None:
    model, _, pruner, opt = _digits_setup(steps=2)
    assert not model.training  # Torch-Pruning's constructor traced it in eval mode
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt)
    assert all(m.training for m in model.modules())
    model.features[1].eval()  # a BatchNorm the user froze stays frozen through a pruning step
    wrapped.step()
    assert model.training and not model.features[1].training
    model.train()
    wrapped.step()
    assert all(m.training for m in model.modules())


def test_a_step_on_a_model_in_eval_mode_warns_once() -> None:
    model, _, pruner, opt = _digits_setup(steps=2)
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt)
    wrapped.step()
    model.eval()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    with pytest.warns(atmc_plugin.TrainingModeWarning, match="Call model.train"):
        for _ in range(3):  # said once, not per step
            loss = F.cross_entropy(model(wrapped.perturb(x, y)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()


@pytest.mark.parametrize("global_pruning", [False, True])
@pytest.mark.parametrize("model_cls", [CifarResNet, MobileBlockNet, TokenMLPBlock, "resnet56"])
def test_architectures(model_cls, global_pruning) -> None:
    torch.manual_seed(0)
    if model_cls == "resnet56":
        model_cls, depth = CifarResNet, 56
    else:
        depth = 20
    model = model_cls(depth) if model_cls is CifarResNet else model_cls()
    head = model.fc if hasattr(model, "fc") else model.head
    ex = torch.rand(1, *_input_shape(model))
    pruner = tp.pruner.GroupNormPruner(
        model,
        ex,
        importance=ADMMProxyImportance(),
        pruning_ratio=0.5,
        iterative_steps=2,
        ignored_layers=[head],
        global_pruning=global_pruning,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt, example_inputs=ex)
    params = sum(p.numel() for p in model.parameters())
    for _ in range(2):
        _train(model, wrapped, opt)
        wrapped.step()
        _assert_consistent(model, wrapped, opt)
    _train(model, wrapped, opt)
    report = wrapped.finalize()
    assert report.params < params
    assert report.elementwise.nnz <= wrapped.target_budget
    with torch.no_grad():
        assert model(ex).shape == (1, 10)


def test_admm_proxy_removes_emptied_channels_first() -> None:
    model, _, pruner, opt = _digits_setup(importance=ADMMProxyImportance(), ratio=0.25, steps=1)
    wrapped = atmc_plugin.wrap(pruner, ATMCConfig(attack=None), optimizer=opt)
    emptied = [1, 4]
    with torch.no_grad():
        model.features[3].weight[emptied] = 0.0  # ATMC emptied two output channels
    wrapped.step()
    removed = {tuple(h[2]) for h in pruner.pruning_history() if h[0] == "features.3"}
    assert removed and all(set(emptied) <= set(r) for r in removed)


def test_robust_taylor_importance_leaves_user_grads() -> None:
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))]
    imp = RobustTaylorImportance(lambda: data, num_batches=1)
    model, _, pruner, opt = _digits_setup(importance=imp)
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt)
    assert all(p.grad is None for p in model.parameters())
    wrapped.step()
    assert all(p.grad is None for p in model.parameters())
    assert any(s.abs().sum() > 0 for s in imp._saliency.values())
    bn_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert bn_weights & set(imp._saliency)  # BatchNorm included
    _assert_consistent(model, wrapped, opt)


def test_unbound_importance_is_a_clear_error() -> None:
    _model, _, pruner, _ = _digits_setup(importance=ADMMProxyImportance())
    with pytest.raises(InputError, match="is not bound"):
        pruner.step()


def test_rgsm_empties_input_channels_that_pruning_then_removes() -> None:
    model, _, pruner, opt = _digits_setup(importance=ADMMProxyImportance(), ratio=0.25, steps=1)
    rgsm = RGSM(lambda1=1e-3, lambda2=0.02, beta=10.0)
    wrapped = atmc_plugin.wrap(pruner, ATMCConfig(attack=None), optimizer=opt, regularizer=rgsm)
    consumer = model.features[3]
    with torch.no_grad():
        consumer.weight[:, [1, 4]] *= 0.05  # two weak input channels
    _train(model, wrapped, opt, steps=5, regularize=lambda loss: wrapped.regularize(model, loss))
    dead = rgsm.dead_inputs(consumer)
    assert dead is not None and dead.nonzero().flatten().tolist() == [1, 4]
    norms = consumer.weight.detach().pow(2).sum(dim=(0, 2, 3)).sqrt()
    assert norms[[1, 4]].max() < 0.5 * norms[[0, 2, 3, 5, 6, 7]].min()  # the split pulls them in
    wrapped.step()
    removed = [set(h[2]) for h in pruner.pruning_history() if h[0] == "features.0"]
    assert removed == [{1, 4}]
    with pytest.raises(ConfigError, match="beta"):
        RGSM(beta=0)


def test_checkpoint_round_trip_weights_only(tmp_path) -> None:
    model, ex, pruner, opt = _digits_setup()
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt)
    for _ in range(2):
        wrapped.step()
        _train(model, wrapped, opt)
    wrapped.finalize()
    path = tmp_path / "pruned.pt"
    save_pruned(path, wrapped, extra={"note": "digits"})
    torch.load(path, weights_only=True)
    fresh = DigitsCNN(width=8)
    meta = load_pruned(path, fresh, ex)
    model.eval(), fresh.eval()
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    assert meta["extra"] == {"note": "digits"}
    restored = atmc_plugin.ATMC(fresh, ATMCConfig.from_dict(meta["config"]))
    restored.load_state_dict(meta["pruner"]["atmc"])
    assert restored.frozen and str(restored.report()) == str(wrapped.atmc.report())


def test_checkpoint_errors_leave_model_untouched(tmp_path) -> None:
    _model, ex, pruner, opt = _digits_setup()
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt)
    wrapped.step()
    path = tmp_path / "pruned.pt"
    save_pruned(path, wrapped)
    other = DigitsCNN(width=16)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(InputError, match="does not fit this model"):
        load_pruned(path, other, ex)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    junk = tmp_path / "junk.pt"
    torch.save({"a": torch.zeros(1)}, junk)
    with pytest.raises(InputError, match="not an atmc-plugin Torch-Pruning checkpoint"):
        load_pruned(junk, DigitsCNN(width=8), ex)
    with pytest.raises(InputError, match="example_inputs are on meta"):
        load_pruned(path, DigitsCNN(width=8), torch.rand(1, 1, 8, 8, device="meta"))
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "atmc-torch-pruning", "obj": Exception("x")}, pickled)
    with pytest.raises(InputError, match="weights-only load refuses"):
        load_pruned(pickled, DigitsCNN(width=8), ex)
    flipped = tmp_path / "flipped.pt"
    payload = torch.load(path, weights_only=True)
    tensor = next(v for v in payload["model"].values() if v.is_floating_point() and v.numel())
    tensor.view(-1)[0] += 1.0  # the stored sha256 is the old content's
    torch.save(payload, flipped)
    with pytest.raises(InputError, match="corrupt"):
        load_pruned(flipped, DigitsCNN(width=8), ex)


def test_bad_input() -> None:
    _model, _, pruner, opt = _digits_setup()
    with pytest.raises(ConfigError, match="factorize = true cannot be combined"):
        atmc_plugin.wrap(
            pruner,
            ATMCConfig(constraint=atmc_plugin.ConstraintConfig(factorize=True)),
        )
    with pytest.raises(InputError, match="example_inputs are on meta"):
        atmc_plugin.wrap(pruner, CFG, example_inputs=torch.rand(1, 1, 8, 8, device="meta"))
    with pytest.raises(ConfigError, match="unknown option"):
        atmc_plugin.wrap(pruner, CFG, optimiser=opt)
    pruner.step()
    with pytest.raises(InputError, match=r"wrap it before its\s+first step"):
        atmc_plugin.wrap(pruner, CFG)


def test_prune_masks_refused_and_nothing_changed() -> None:
    model, _, pruner, _ = _digits_setup()
    torch.nn.utils.prune.l1_unstructured(model.features[0], "weight", amount=0.5)
    with pytest.raises(InputError, match=r"torch\.nn\.utils\.prune masks"):
        atmc_plugin.wrap(pruner, CFG)
    assert pruner.current_step == 0


def test_classifier_not_ignored_is_refused_before_anything_changes() -> None:
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    pruner = tp.pruner.BasePruner(
        model,
        torch.rand(1, 1, 8, 8),
        importance=tp.importance.GroupMagnitudeImportance(),
        pruning_ratio=0.5,
        ignored_layers=[nn.Linear],
    )
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InputError, match=r"outputs of 'fc'.*ignored_layers=\[model.fc\]"):
        atmc_plugin.wrap(pruner, CFG)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_inner_linear_declared_last_is_not_taken_for_the_classifier() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(16, 10)
            self.inner = nn.Linear(64, 16)  # declared last, used first

        def forward(self, x):
            return self.head(torch.relu(self.inner(x.flatten(1))))

    model = Net()
    pruner = tp.pruner.BasePruner(
        model,
        torch.rand(1, 1, 8, 8),
        importance=tp.importance.GroupMagnitudeImportance(),
        pruning_ratio=0.5,
        ignored_layers=[model.head],
    )
    wrapped = atmc_plugin.wrap(pruner, CFG)
    wrapped.step()
    assert model.head.out_features == 10 and model.inner.out_features < 16


def test_a_budget_the_structure_already_meets_is_a_warning_with_the_numbers() -> None:
    _model, ex, pruner, opt = _digits_setup(ratio=0.9, steps=2)
    cfg = ATMCConfig.from_dict({"attack": False, "constraint": {"density": 0.5}})
    with pytest.warns(UserWarning, match=r"leaves \d+ of the \d+ compressible weights \(exact\)"):
        wrapped = atmc_plugin.wrap(pruner, cfg, optimizer=opt, example_inputs=ex)
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapped.step()
    report = wrapped.finalize().elementwise
    assert report.nnz <= wrapped.target_budget  # the constraint holds: it was met structurally


def test_structural_pruning_undercutting_the_budget_warns() -> None:
    _model, _, pruner, opt = _digits_setup(ratio=0.9, steps=1)
    cfg = ATMCConfig.from_dict({"attack": False, "constraint": {"density": 0.5}})
    wrapped = atmc_plugin.wrap(pruner, cfg, optimizer=opt)
    with pytest.warns(UserWarning, match="no longer binds"):
        wrapped.step()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_end_to_end() -> None:
    torch.manual_seed(0)
    model = DigitsCNN(width=8).cuda()
    ex = torch.rand(1, 1, 8, 8, device="cuda")
    pruner = tp.pruner.GroupNormPruner(
        model,
        ex,
        importance=ADMMProxyImportance(),
        pruning_ratio=0.5,
        iterative_steps=2,
        ignored_layers=[model.fc],
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt, example_inputs=ex)
    with warnings.catch_warnings():
        for _ in range(2):
            wrapped.step()
            x, y = torch.rand(8, 1, 8, 8, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
            loss = F.cross_entropy(model(wrapped.perturb(x, y)), y) + wrapped.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert wrapped.finalize().elementwise.nnz <= wrapped.target_budget


def test_load_state_dict_resumes_mid_schedule(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A fresh wrapper + load_state_dict behaves like the original from then on."""
    import atmc_plugin
    from atmc_plugin import ATMCConfig, ConstraintConfig
    from atmc_plugin.app.models import DigitsCNN

    def make():  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        model = DigitsCNN(width=8)
        pruner = tp.pruner.GroupNormPruner(
            model,
            torch.rand(2, 1, 8, 8),
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=0.5,
            iterative_steps=3,
            ignored_layers=[model.fc],
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        config = ATMCConfig(attack=None, constraint=ConstraintConfig(density=0.15, bits=4))
        return model, atmc_plugin.wrap(pruner, config, optimizer=opt), opt

    model, wrapped, _ = make()
    wrapped.step()
    state = wrapped.state_dict()
    fresh_model, fresh, fresh_opt = make()
    fresh.load_state_dict(state)
    fresh_model.load_state_dict(model.state_dict())
    assert fresh.current_step == 1
    assert all(
        p in {q for g in fresh_opt.param_groups for q in g["params"]}
        for p in fresh_model.parameters()
    )
    for _ in range(2):
        wrapped.step()
        fresh.step()
        assert [p.shape for p in fresh_model.parameters()] == [p.shape for p in model.parameters()]
    assert fresh.pruning_history() == wrapped.pruning_history()
    with pytest.raises(atmc_plugin.InputError, match="freshly wrapped"):
        fresh.load_state_dict(state)


def test_every_structure_change_goes_through_the_wrapper() -> None:
    model, ex, pruner, opt = _digits_setup(steps=2)
    wrapped = atmc_plugin.wrap(pruner, CFG, optimizer=opt, example_inputs=ex)
    _train(model, wrapped, opt)
    prune_out = tp.prune_conv_out_channels
    conv1, conv2 = model.features[0], model.features[3]
    width = conv1.out_channels
    wrapped.manual_prune_width(conv1, prune_out, [0, 1])  # by indices
    assert conv1.out_channels == width - 2
    _assert_consistent(model, wrapped, opt)
    wrapped.manual_prune_width(conv1, prune_out, 0.5)  # by ratio and importance
    assert conv1.out_channels == (width - 2) - (width - 2) // 2
    _assert_consistent(model, wrapped, opt)
    group = wrapped.DG.get_pruning_group(conv2, prune_out, [0])
    group.prune()
    _assert_consistent(model, wrapped, opt)
    _train(model, wrapped, opt)  # the optimizer trains the live tensors
    wrapped.step()
    _assert_consistent(model, wrapped, opt)
    with pytest.raises(InputError, match="reset"):
        wrapped.reset()
    with pytest.raises(InputError, match="load_state_dict"):
        wrapped.load_pruning_history(wrapped.pruning_history())
    with pytest.raises(InputError, match="load_state_dict"):
        wrapped.DG.load_pruning_history(wrapped.pruning_history())


def _vit_pruner(model):
    return tp.pruner.MagnitudePruner(
        model,
        torch.rand(1, 1, 8, 8),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.25,
        iterative_steps=2,
        ignored_layers=[model.head],
        unwrapped_parameters=model.unwrapped(),
    )


def _one_sgd_step(model, opt) -> None:
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    model.train()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def test_direct_parameters_follow_pruning_and_wrap_off_equals_bare() -> None:
    """Class token, position embeddings and layer scale (Torch-Pruning's unwrapped parameters)
    follow every step: the optimizer holds exactly the live tensors with sliced momentum, and
    with ATMC off the wrapped pruner prunes exactly as the bare one, values included."""
    from tp_models import TinyViT

    torch.manual_seed(0)
    bare_model = TinyViT()
    wrapped_model = copy.deepcopy(bare_model)
    bare, bare_opt = _vit_pruner(bare_model), torch.optim.SGD(bare_model.parameters(), lr=0.1)
    opt = torch.optim.SGD(wrapped_model.parameters(), lr=0.1, momentum=0.9)
    wrapped = atmc_plugin.wrap(_vit_pruner(wrapped_model), ATMCConfig(attack=None), optimizer=opt)
    _one_sgd_step(bare_model, bare_opt)
    _one_sgd_step(wrapped_model, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an untraced slice would warn
        for _ in range(2):
            bare.step()
            wrapped.step()
    assert wrapped_model.cls_token.shape == (1, 1, 12) == bare_model.cls_token.shape
    assert wrapped_model.state_dict().keys() == bare_model.state_dict().keys()
    for key, value in bare_model.state_dict().items():
        assert torch.equal(wrapped_model.state_dict()[key], value), key
    live = {id(p) for p in wrapped_model.parameters()}
    held = [p for group in opt.param_groups for p in group["params"]]
    assert {id(p) for p in held} == live and len(held) == len(live)
    for p in held:
        assert opt.state[p]["momentum_buffer"].shape == p.shape
    _one_sgd_step(wrapped_model, opt)  # trains the live tensors
