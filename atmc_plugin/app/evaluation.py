"""The command's honest evaluation of the dense and compressed models, with progress in the log."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..robustness import EvalProgress
from .build import Data
from .recipe import Recipe

log = logging.getLogger(__name__)


def evaluate_pair(
    recipe: Recipe,
    data: Data,
    models: dict[str, nn.Module],
    preset: str,
    device: torch.device,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Honest evaluation (:func:`atmc_plugin.evaluate`) of each model on the test split:
    ``({name: report dict}, {name: seconds it took})``."""
    from ..robustness import evaluate

    n = recipe.eval_limit or len(data.y_test)
    x, y = data.x_test[:n].to(device), data.y_test[:n].to(device)
    out, timings = {}, {}
    for name, model in models.items():
        started = time.perf_counter()
        with _bar_keeps_the_bottom_line(progress):
            report = evaluate(
                model,
                (x, y),
                eps=recipe.eps,
                preset=preset,
                progress=progress,
                on_progress=_eval_logger(name),
                cascade=recipe.cascade,
                channels_last=recipe.channels_last,
                label=name,
            )
        seconds = time.perf_counter() - started
        log.info("%s: %s (%.0f s)", name, report, seconds)
        out[name] = report.to_dict()
        timings[name] = seconds
    return out, timings


def _bar_keeps_the_bottom_line(progress: bool) -> contextlib.AbstractContextManager[Any]:
    """On a terminal, log lines are written above the progress bar instead of through it."""
    if not progress:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def _eval_logger(name: str) -> Callable[[EvalProgress], None]:
    """One log line per attack and batch: model, attack, points still robust, elapsed, ETA."""

    def say(p: EvalProgress) -> None:
        batches = f"/{p.batches}" if p.batches else ""
        eta = f", about {p.eta:.0f} s left" if p.eta is not None else ""
        log.info(
            "evaluating %s: batch %d%s, %s, %.0f s%s",
            name,
            p.batch,
            batches,
            p.summary(),
            p.elapsed,
            eta,
        )

    return say
