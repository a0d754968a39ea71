"""The run folder's lock: one writing process at a time, stale locks taken over.

``run.lock`` holds the writer's pid, host and start time. It is created with ``O_EXCL``, so two
processes never both hold it; a lock whose process is gone (same host), or that is unreadable
and older than 10 s (a process killed between creating and writing it), is taken over with a
warning. A lock held on another host is never taken over: there is no way to tell from here
whether that process is alive.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from .recipe import RecipeError

log = logging.getLogger(__name__)


class RunLock:
    """The lock file ``path`` of the folder ``root`` (named in messages)."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path, self.root = path, root
        self.held = False

    def acquire(self) -> None:
        """Take the lock, taking over a stale one.

        :raises RecipeError: another live process holds it.
        """
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if not is_stale(holder, self.path):
                    who = "another process that is starting"
                    if holder is not None:
                        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"]))
                        who = f"process {holder['pid']} on {holder.get('host')} (since {since})"
                    raise RecipeError(
                        f"run folder {str(self.root)!r} is in use by {who}; wait for it to "
                        f"finish, or delete {str(self.path)!r} if that process no longer exists."
                    ) from None
                log.warning("taking over the stale lock of %s (%s)", self.root, holder or "empty")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(mine, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return
        raise RecipeError(f"could not take the lock {str(self.path)!r}; try again.")

    def release(self) -> None:
        """Give the lock back (only if this process holds it)."""
        if self.held:
            holder = read_holder(self.path)
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False


def read_holder(path: Path) -> dict[str, Any] | None:
    """The lock's content, or ``None`` when it is unreadable or malformed."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int)
    return holder if ok and isinstance(holder.get("since"), (int, float)) else None


def is_stale(holder: dict[str, Any] | None, path: Path) -> bool:
    """A lock is stale when its process is gone (same host), or unreadable and old."""
    if holder is None:  # killed between creating and writing it
        try:
            return time.time() - path.stat().st_mtime > 10
        except FileNotFoundError:
            return True
    if holder.get("host") != socket.gethostname():
        return False  # cannot tell whether a process on another machine is alive
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False
