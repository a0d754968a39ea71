"""The run directory: config snapshot, JSON-lines metrics, checkpoints, results.

Layout::

    RUN_DIR/
      .atmc-run              marker: this folder is an atmc run (written first)
      run.lock               held while a process writes the folder (pid, host, start time)
      recipe.toml            the recipe as given (snapshot)
      run.json               resolved settings: seed, device, versions, recipe digest
      metrics.jsonl          one JSON object per epoch (and per evaluation)
      checkpoints/last.pt    written atomically after every epoch (weights_only loadable)
      checkpoints/dense.pt   the model after pre-training (the reference of the report)
      final.pt               the compressed model, pruning history and ATMC state
      model.safetensors      compact export (sparse indices + b-bit codes + codebooks)
      results.json           evaluation, sizes, latency
      report.md, *.png       the report (``atmc report RUN_DIR`` rebuilds them)

Lifecycle: :meth:`RunDir.prepare` takes the lock first, then writes the marker; a folder is
only ever written when it is empty, or ours and ``--resume`` was asked for. A run killed before
its first checkpoint resumes from scratch. Checkpoints and ``final.pt`` carry a sha256 of their
content that every read verifies; a torn last line of ``metrics.jsonl`` (a kill mid-write) is
dropped on read.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ATMCError, InputError
from ..io import (
    remove_stale_temporaries,
    save_atomically,
    seal,
    seal_json,
    unseal,
    unseal_json,
    write_text_atomically,
)
from .recipe import Recipe, RecipeError
from .runlock import RunLock

log = logging.getLogger(__name__)
MARKER = ".atmc-run"
LOCK = "run.lock"
WRITE_TEST = ".write-test-"

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
        self.marker = root / MARKER
        self.lock = root / LOCK
        self._lock = RunLock(self.lock, root)

    @property
    def is_run(self) -> bool:
        """The folder holds an atmc run (its marker, or the metrics of an older version)."""
        return self.marker.exists() or self.metrics.exists()

    @classmethod
    def prepare(cls, root: Path, recipe: Recipe, resume: bool, is_writer: bool = True) -> RunDir:
        """Lock the folder, check it may be written, mark it, snapshot the recipe.

        A new run needs an empty (or missing) folder; ``resume`` needs one of our run folders
        (with or without a checkpoint). The lock is held until :meth:`release`.

        :raises RecipeError: not writable, in use by another process, another run's or a
            foreign folder without ``resume``, or ``resume`` on a folder that is not a run
            (nothing is written or overwritten in each case).
        """
        run = cls(root)
        if not is_writer:
            return run
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=WRITE_TEST):
                pass
        except OSError as exc:
            raise RecipeError(
                f"output folder {str(root)!r} is not writable ({exc.strerror or exc}); "
                "pass --out with a folder you can write to."
            ) from exc
        run.acquire()
        try:
            run._check_and_mark(recipe, resume)
        except BaseException:
            run.release()
            raise
        return run

    def _check_and_mark(self, recipe: Recipe, resume: bool) -> None:
        root = self.root
        if resume and not self.is_run:
            raise RecipeError(
                f"--resume: {str(root)!r} is not an atmc run folder (no {MARKER}); start the "
                "run without --resume."
            )
        if not resume:
            if self.is_run:
                raise RecipeError(
                    f"output folder {str(root)!r} already holds a run; pass --resume to continue "
                    "it or --out with a new folder (nothing was overwritten)."
                )
            ours = (LOCK, MARKER)  # and leftovers of our own interrupted starts:
            foreign = sorted(
                p.name
                for p in root.iterdir()
                if p.name not in ours and not p.name.startswith(WRITE_TEST)
            )
            if foreign:
                raise RecipeError(
                    f"output folder {str(root)!r} is not empty and not an atmc run folder (it "
                    f"holds {', '.join(foreign[:3])}{'...' if len(foreign) > 3 else ''}); pass "
                    "--out with a new or empty folder (nothing was overwritten)."
                )
            write_text_atomically(
                json.dumps({"format": "atmc-run", "version": 1}) + "\n", self.marker
            )
        for folder in (root, self.checkpoints):
            for stale in remove_stale_temporaries(folder):
                log.info("removed %s, left by an interrupted write", stale)
        for stale in root.glob(f"{WRITE_TEST}*"):
            stale.unlink(missing_ok=True)
        snapshot = root / "recipe.toml"
        if not resume and Path(recipe.path).resolve() != snapshot.resolve():
            write_text_atomically(Path(recipe.path).read_text(encoding="utf-8"), snapshot)
        if not resume:
            self._snapshot_code(recipe)

    @property
    def code(self) -> Path:
        """Copies of the recipe's factory modules (see :func:`factories.local_sources`)."""
        return self.root / "code"

    def _snapshot_code(self, recipe: Recipe) -> None:
        """Copy the factory modules, so ``atmc eval`` rebuilds the model after a move."""
        from .factories import local_sources

        folder = Path(recipe.path).parent
        for source in local_sources(recipe):
            target = self.code / source.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(source.read_text(encoding="utf-8"), target)

    # -- the lock ------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the folder's lock (:class:`~atmc_plugin.app.runlock.RunLock`).

        :raises RecipeError: another live process holds it.
        """
        self._lock.acquire()

    def release(self) -> None:
        """Give the lock back (only if this process holds it)."""
        self._lock.release()

    # -- metrics -------------------------------------------------------------------------------
    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one record (with a ``sha256`` of its content, checked by :meth:`read_metrics`)."""
        with self.metrics.open("a", encoding="utf-8") as f:
            f.write(_metrics_line(record))
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metric records; a torn last line (a kill mid-write) is dropped with a warning.

        :raises InputError: a line other than the last is not JSON, or a record does not match
            its sha256 (the file is left as is).
        """
        if not self.metrics.exists():
            return []
        lines = [line for line in self.metrics.read_text(encoding="utf-8").splitlines() if line]
        records = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                if i == len(lines) - 1:
                    log.warning("%s: dropping a torn last line (%s)", self.metrics, exc)
                    break
                raise InputError(
                    f"{str(self.metrics)!r} line {i + 1} is not a JSON record ({exc}); the file "
                    "was not modified. Remove that line to continue."
                ) from exc
            records.append(unseal_json(record, f"{str(self.metrics)!r} line {i + 1}", "file"))
        return records

    def truncate_metrics(self, count: int) -> None:
        """Keep the first ``count`` records (those covered by the checkpoint being resumed)."""
        kept = self.read_metrics()[:count]
        write_text_atomically("".join(_metrics_line(r) for r in kept), self.metrics)

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        """Write ``data`` as JSON with a ``sha256`` of its content (see :func:`read_json`)."""
        write_text_atomically(json.dumps(seal_json(data), indent=1) + "\n", path)

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, state: dict[str, Any], recipe: Recipe) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "recipe_digest": recipe.digest,
            **state,
        }
        save_atomically(sealed(payload), path)


def _metrics_line(record: dict[str, Any]) -> str:
    return json.dumps(seal_json(record)) + "\n"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object written by :meth:`RunDir.write_json`, its sha256 verified (files without
    one, from older versions, are read as they are).

    :raises InputError: unreadable, not an object, or its content does not match its sha256.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{str(path)!r} is not readable JSON ({exc}); it was not modified."
        ) from exc
    if not isinstance(data, dict):
        raise InputError(f"{str(path)!r} does not hold a JSON object; it was not modified.")
    return unseal_json(data, repr(str(path)), "file", " Rerun the run, or restore the file.")


def sealed(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with the sha256 of its content, which :func:`read_tagged` verifies."""
    return seal(payload)


def read_tagged(path: Path, fmt: str) -> dict[str, Any]:
    """Read ``path`` with ``torch.load(weights_only=True)`` and check its ``format`` tag.

    :raises InputError: missing, corrupt, pickled or foreign file (it is left as it is).
    """
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError as exc:
        raise InputError(f"checkpoint {str(path)!r} does not exist.") from exc
    except pickle.UnpicklingError as exc:
        raise InputError(
            f"{str(path)!r} holds pickled Python objects, which a weights-only load refuses "
            "because unpickling can run arbitrary code; atmc files never need it. It was not "
            "modified. If it is not from atmc, load it yourself only if you trust its source."
        ) from exc
    except Exception as exc:  # torch raises many types for corrupt files
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise InputError(
            f"checkpoint {str(path)!r} is corrupt or not an atmc checkpoint "
            f"({type(exc).__name__}: {first}); it was not modified. "
            "Delete it to start over, or resume from a copy."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise InputError(
            f"{str(path)!r} is not an atmc {fmt!r} file (no such format tag); it was not modified."
        )
    return unseal(payload, path)


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
        dense = path.parent / "dense.pt"
        keep = (
            f"; a new run keeps this run's pre-training with [model] weights = {str(dense)!r}"
            if dense.is_file()
            else ""
        )
        raise InputError(
            f"{str(path)!r} was written by a different recipe (digest "
            f"{payload.get('recipe_digest')} vs {recipe.digest}); resume with the recipe "
            f"snapshot in the run folder (RUN_DIR/recipe.toml) or start a new run{keep}."
        )
    return payload


def require_run_dir(root: Path) -> RunDir:
    """An existing run folder (for ``atmc report``)."""
    run = RunDir(root)
    if not root.is_dir() or not run.metrics.exists():
        raise ATMCError(f"{str(root)!r} is not a run folder (no metrics.jsonl); run `atmc run`.")
    return run
