"""File writing that never leaves a half-written file behind, and content checksums.

Every write goes to a temporary file in the target's folder, is flushed and ``fsync``-ed, then
renamed over the target (and the folder entry is synced), so a crash, a kill or a full disk
leaves either the old file or the new one. Files are created with mode ``0o644`` whatever the
temporary file's default. :func:`content_digest` hashes a checkpoint's content (tensors
bit for bit) so a reader can tell a corrupted file from a good one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

FILE_MODE = 0o644
TMP_SUFFIX = ".tmp"


def replace_atomically(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, fsync it, give it mode
    0644 and rename it over ``path`` (for writers that take a file name, like safetensors)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
        _sync_folder(target.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomically(payload: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash or interruption leaves either the old file or the new one, never a partial file.
    """
    replace_atomically(path, lambda tmp: torch.save(payload, tmp))


def write_text_atomically(text: str, path: str | Path) -> None:
    """Write ``text`` (UTF-8) to a temporary file beside ``path``, fsync, then rename over it."""

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    replace_atomically(path, write)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files interrupted writes left in ``folder`` (not recursive).

    Only call it while no other process writes the folder (the run lock guarantees it).
    """
    removed = []
    for p in folder.glob(f".*{TMP_SUFFIX}") if folder.is_dir() else []:
        if p.is_file():
            p.unlink()
            removed.append(p)
    return removed


def content_digest(value: Any) -> str:
    """sha256 over a nested structure of dicts, lists, tensors and plain values.

    Tensors are hashed by dtype, shape and raw bytes; dict keys in order. The same content read
    back with ``torch.load`` gives the same digest, and one flipped bit changes it.
    """
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        h.update(b"{")
        for k, v in value.items():
            h.update(repr(k).encode())
            _feed(h, v)
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[" if isinstance(value, list) else b"(")
        for v in value:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(repr(value).encode())


DIGEST_KEY = "sha256"


def seal(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` with the sha256 of its content under ``"sha256"`` (see :func:`unseal`)."""
    return {**payload, DIGEST_KEY: content_digest(payload)}


def unseal(payload: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Remove and verify the sha256 :func:`seal` stored (files without one are accepted).

    :raises InputError: the content does not match it.
    """
    from .errors import InputError

    digest = payload.pop(DIGEST_KEY, None)
    if digest is not None and digest != content_digest(payload):
        raise InputError(
            f"checkpoint {str(path)!r} is corrupt: its content does not match the sha256 written "
            "with it; it was not modified. Delete it, or restore it from a copy."
        )
    return payload


def json_digest(data: Any) -> str:
    """sha256 of a JSON value (keys sorted): the seal of the run folder's JSON files."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def seal_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` as plain JSON (other values as strings) with its sha256 under ``"sha256"``:
    what ``results.json``, ``run.json`` and each ``metrics.jsonl`` record hold."""
    import json

    plain = json.loads(json.dumps(data, default=str))
    return {**plain, DIGEST_KEY: json_digest(plain)}


def unseal_json(
    data: dict[str, Any], what: str, unit: str = "file", fix: str = ""
) -> dict[str, Any]:
    """Remove and verify the sha256 :func:`seal_json` stored (data without one is accepted).

    :param what: names the data in the error, e.g. ``"'RUN/results.json'"``.
    :param unit: what was left unmodified (``"file"``).
    :param fix: appended to the error.
    :raises InputError: the content does not match it.
    """
    from .errors import InputError

    digest = data.pop(DIGEST_KEY, None)
    if digest is not None and digest != json_digest(data):
        raise InputError(
            f"{what} was changed or corrupted after it was written (its sha256 does not match); "
            f"the {unit} was not modified.{fix}"
        )
    return data
