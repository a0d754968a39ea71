"""The run directory: config snapshot, JSON-lines metrics, checkpoints, results.

Layout::

    RUN_DIR/
      recipe.toml            the recipe as given (snapshot)
      run.json               resolved settings: seed, device, versions, recipe digest
      metrics.jsonl          one JSON object per epoch (and per evaluation)
      checkpoints/last.pt    written atomically after every epoch (weights_only loadable)
      checkpoints/dense.pt   the model after pre-training (the reference of the report)
      final.pt               the compressed model, pruning history and ATMC state
      model.safetensors      compact export (sparse indices + b-bit codes + codebooks)
      results.json           evaluation, sizes, latency
      report.md, *.png       the report (``atmc report RUN_DIR`` rebuilds them)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import ATMCError, InputError
from .io import save_atomically, write_text_atomically
from .recipe import Recipe, RecipeError

CHECKPOINT_FORMAT = "atmc-run-checkpoint"
CHECKPOINT_VERSION = 1


class RunDir:
    """One run's folder. Create it with :meth:`prepare` (checks it is writable first)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkpoints = root / "checkpoints"
        self.metrics = root / "metrics.jsonl"
        self.last = self.checkpoints / "last.pt"
        self.dense = self.checkpoints / "dense.pt"
        self.final = root / "final.pt"
        self.results = root / "results.json"

    @classmethod
    def prepare(cls, root: Path, recipe: Recipe, resume: bool, is_writer: bool = True) -> RunDir:
        """Check the folder is usable, then (writer only) snapshot the recipe.

        :raises RecipeError: the folder is not writable, or holds another run and ``resume``
            was not asked for (nothing is overwritten), or ``resume`` without a checkpoint.
        """
        run = cls(root)
        if not is_writer:
            return run
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise RecipeError(
                f"output folder {str(root)!r} is not writable ({exc.strerror or exc}); "
                "pass --out with a folder you can write to."
            ) from exc
        if resume:
            if not run.last.exists():
                raise RecipeError(
                    f"--resume: {str(run.last)!r} does not exist; nothing to resume. Start the "
                    "run without --resume."
                )
        elif run.metrics.exists() or run.last.exists():
            raise RecipeError(
                f"output folder {str(root)!r} already holds a run; pass --resume to continue it "
                "or --out with a new folder (nothing was overwritten)."
            )
        if not resume:
            shutil.copyfile(recipe.path, root / "recipe.toml")
        return run

    # -- metrics -------------------------------------------------------------------------------
    def log_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        lines = self.metrics.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def truncate_metrics(self, count: int) -> None:
        """Keep the first ``count`` records (those covered by the checkpoint being resumed)."""
        kept = self.read_metrics()[:count]
        write_text_atomically("".join(json.dumps(r) + "\n" for r in kept), self.metrics)

    def write_json(self, path: Path, data: Any) -> None:
        write_text_atomically(json.dumps(data, indent=1, default=str) + "\n", path)

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, state: dict[str, Any], recipe: Recipe) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "recipe_digest": recipe.digest,
            **state,
        }
        save_atomically(payload, path)


def read_tagged(path: Path, fmt: str) -> dict[str, Any]:
    """Read ``path`` with ``torch.load(weights_only=True)`` and check its ``format`` tag.

    :raises InputError: missing, corrupt, pickled or foreign file (it is left as it is).
    """
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError as exc:
        raise InputError(f"checkpoint {str(path)!r} does not exist.") from exc
    except Exception as exc:  # torch raises many types for corrupt or pickled files
        raise InputError(
            f"checkpoint {str(path)!r} is corrupt or not a weights-only atmc checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); it was not modified. "
            "Delete it to start over, or resume from a copy."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise InputError(
            f"{str(path)!r} is not an atmc {fmt!r} file (no such format tag); it was not modified."
        )
    return payload


def load_checkpoint(path: Path, recipe: Recipe | None = None) -> dict[str, Any]:
    """Read a run checkpoint (:func:`read_tagged`) and check it belongs to ``recipe``.

    :raises InputError: unreadable, corrupt or foreign file, or one from another recipe (the
        file is left as it is).
    """
    payload = read_tagged(path, CHECKPOINT_FORMAT)
    if payload.get("version") != CHECKPOINT_VERSION:
        raise InputError(
            f"{str(path)!r} has checkpoint version {payload.get('version')!r}; this atmc-plugin "
            f"reads version {CHECKPOINT_VERSION}."
        )
    if recipe is not None and payload.get("recipe_digest") != recipe.digest:
        raise InputError(
            f"{str(path)!r} was written by a different recipe (digest "
            f"{payload.get('recipe_digest')} vs {recipe.digest}); resume with the recipe "
            "snapshot in the run folder (RUN_DIR/recipe.toml) or start a new run."
        )
    return payload


def require_run_dir(root: Path) -> RunDir:
    """An existing run folder (for ``atmc report``)."""
    run = RunDir(root)
    if not root.is_dir() or not run.metrics.exists():
        raise ATMCError(f"{str(root)!r} is not a run folder (no metrics.jsonl); run `atmc run`.")
    return run
