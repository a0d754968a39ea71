from __future__ import annotations

import itertools
from typing import ClassVar

import pytest
import torch
from torch import nn

from atmc_plugin import ConfigError, RobustnessWarning, evaluate
from atmc_plugin.robustness import eps_sweep


def _data(n: int = 24):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_quick_evaluation_keeps_rng_modes_and_weights(tiny_model) -> None:
    x, y = _data()
    tiny_model.eval()
    weights = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    report = evaluate(tiny_model, (x, y), eps=0.1, batch_size=10)
    assert torch.equal(torch.rand(3), expected)  # the global RNG stream is untouched
    assert not tiny_model.training
    assert all(torch.equal(v, weights[k]) for k, v in tiny_model.state_dict().items())
    assert report.n == 24 and 0 <= report.robust <= report.clean <= 1
    assert report.robust <= min(report.per_attack.values())
    assert "pgd20x2" in report.per_attack and "eps 0.1" in str(report)


class _LayoutSpy(nn.Module):
    """A small CNN that records, in a list its copies share, whether its inputs arrive in
    ``channels_last`` and whether its convolution's weight is stored that way."""

    seen: ClassVar[list[tuple[bool, bool]]] = []

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = torch.channels_last
        _LayoutSpy.seen.append(
            (
                x.is_contiguous(memory_format=last),
                self.conv.weight.is_contiguous(memory_format=last),
            )
        )
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_images_are_attacked_on_a_channels_last_copy_and_the_model_is_left_as_it_was() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 3, 8, 8, generator=g), torch.randint(0, 10, (24,), generator=g)
    torch.manual_seed(0)
    model = _LayoutSpy().eval()
    reports = {}
    for layout in (False, True):
        _LayoutSpy.seen.clear()
        torch.manual_seed(5)
        reports[layout] = evaluate(model, (x, y), eps=0.1, channels_last=layout)
        assert set(_LayoutSpy.seen) == {(layout, layout)}
    assert model.conv.weight.is_contiguous()  # the user's model is not converted
    assert reports[True].clean == reports[False].clean
    assert abs(reports[True].robust - reports[False].robust) <= 1 / 24  # float rounding only


def test_non_image_inputs_are_attacked_as_they_are() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 10)).eval()
    x = torch.rand(12, 16)
    report = evaluate(model, (x, torch.randint(0, 10, (12,))), eps=0.1)
    assert report.n == 12


def test_progress_is_reported_after_each_attack_on_each_batch(tiny_model) -> None:
    x, y = _data()
    tiny_model.eval()
    events = []
    report = evaluate(tiny_model, (x, y), eps=0.1, batch_size=10, on_progress=events.append)
    assert [(e.batch, e.batches, e.attack) for e in events] == [
        (1, 3, "pgd20x2"),
        (2, 3, "pgd20x2"),
        (3, 3, "pgd20x2"),
    ]
    assert [e.points for e in events] == [10, 20, 24]
    assert events[-1].robust == round(report.robust * report.n)
    assert all(a.elapsed <= b.elapsed for a, b in itertools.pairwise(events))
    assert events[-1].eta == 0.0 and events[0].eta is not None


def test_the_progress_bar_names_the_model_the_attack_and_the_count(tiny_model, capsys) -> None:
    x, y = _data()
    tiny_model.eval()
    events = []
    evaluate(
        tiny_model,
        (x, y),
        eps=0.1,
        batch_size=10,
        progress=True,
        label="compressed",
        on_progress=events.append,
    )
    bar = capsys.readouterr().err
    assert "compressed eps=0.1" in bar and "3/3" in bar
    assert events[-1].summary() in bar  # "pgd20x2 (1/1): r/24 robust"


def test_standard_preset_runs_the_ensemble(tiny_model) -> None:
    x, y = _data(8)
    tiny_model.eval()
    report = evaluate(tiny_model, (x, y), eps=0.3, preset="standard")
    assert set(report.per_attack) == {"pgd20x5", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square"}


def test_cascade_attacks_only_the_points_still_robust(tiny_model) -> None:
    x, y = _data(16)
    tiny_model.eval()
    calls = []
    model = nn.Sequential(tiny_model).eval()
    model.register_forward_pre_hook(lambda _m, args: calls.append(len(args[0])))
    full = evaluate(model, (x, y), eps=0.05, preset="quick", sanity=False)
    n_full = sum(calls)
    calls.clear()
    cascade = evaluate(model, (x, y), eps=0.05, preset="quick", sanity=False, cascade=True)
    assert cascade.cascade and not full.cascade
    assert cascade.per_attack["pgd20x2"] == cascade.robust <= cascade.clean == full.clean
    assert sum(calls) < n_full  # no attack forward passes on misclassified points
    assert full.clean < 1  # some points were misclassified, so the cascade skipped them


def test_train_mode_warns_and_is_restored(tiny_model) -> None:
    tiny_model.train()
    with pytest.warns(RobustnessWarning, match="train mode"):
        report = evaluate(tiny_model, _data(), eps=0.1)
    assert tiny_model.training and "train-mode" in report.flags


def test_probability_outputs_warn(tiny_model) -> None:
    model = nn.Sequential(tiny_model, nn.Softmax(dim=1)).eval()
    with pytest.warns(RobustnessWarning, match="probabilities"):
        evaluate(model, _data(), eps=0.1)


class _Masked(nn.Module):
    """Rounds its input before a linear layer: zero gradients, but not robust."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x + (torch.round(x * 4) / 4 - x).detach() * 0 + (torch.round(x * 4) / 4 - x)
        return self.fc(q.flatten(1))


def test_masked_gradients_are_flagged() -> None:
    x, _ = _data(32)
    model = _Masked().eval()
    with torch.no_grad():
        y = model(x).argmax(1)  # every point clean-correct
    with pytest.warns(RobustnessWarning) as record:
        report = evaluate(model, (x, y), eps=0.3, preset="standard")
    messages = " ".join(str(w.message) for w in record)
    assert "zero input gradient" in messages
    assert "zero-gradients" in report.flags


def test_eps_sweep_flags_robustness_at_huge_eps() -> None:
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bias.expand(len(x), 10) + 0 * x.flatten(1)[:, :10]

    x, _ = _data(8)
    y = torch.zeros(8, dtype=torch.long)
    with pytest.warns(RobustnessWarning, match="should be 0"):
        eps_sweep(Constant().eval(), (x, y), [0.1, 0.5], sanity=False)


def test_bad_input(tiny_model) -> None:
    with pytest.raises(ConfigError, match="preset"):
        evaluate(tiny_model, _data(), eps=0.1, preset="fast")
    with pytest.raises(ConfigError, match="eps"):
        evaluate(tiny_model, _data(), eps=0)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, y: (x, y + 10), r"labels must lie in 0\.\.9"),
        (lambda x, y: (x, y - 5), "labels must be >= 0"),
        (lambda x, y: (x, y.float() + 0.7), "class indices"),
        (lambda x, y: (x, y[:, None]), "1-D tensor"),
        (lambda x, y: (x.expand(-1, 3, -1, -1), y), "does not accept inputs of shape"),
        (lambda x, y: (x * float("nan"), y), "NaN or inf"),
        (lambda x, y: (x * 255, y), r"must lie in \[0, 1\]"),
        (lambda x, y: (x, y[:3]), "24 inputs but 3 labels"),
    ],
)
def test_bad_data_gets_a_clear_error(tiny_model, change, match) -> None:
    from atmc_plugin import InputError

    tiny_model.eval()
    x, y = _data()
    with pytest.raises(InputError, match=match):
        evaluate(tiny_model, change(x, y), eps=0.1, sanity=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": float("inf")}, "eps"),
        ({"eps": 2.0}, "eps"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_settings_are_refused(tiny_model, kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        evaluate(tiny_model.eval(), _data(), **{"eps": 0.1, **kwargs})


def test_no_data(tiny_model) -> None:
    from atmc_plugin import InputError

    with pytest.raises(InputError, match="data is None"):
        evaluate(tiny_model.eval(), None, eps=0.1)
