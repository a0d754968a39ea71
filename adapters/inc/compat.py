"""Which Intel Neural Compressor versions the adapter supports."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from atmc_plugin import ATMCError

MINIMUM = (3, 10)
DISTRIBUTIONS = ("neural-compressor-pt", "neural-compressor")


def installed_version() -> str | None:
    """Version of the installed INC distribution (torch part preferred), or None."""
    for dist in DISTRIBUTIONS:
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def check_supported(found: str | None) -> None:
    """Raise :class:`ATMCError` unless ``found`` is an INC version this adapter supports."""
    if found is None:
        raise ATMCError(
            "the INC adapter needs Intel Neural Compressor's torch part: "
            "pip install 'neural-compressor-pt>=3.10'."
        )
    parts = []
    for piece in found.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MINIMUM:
        raise ATMCError(
            f"Intel Neural Compressor {found} is not supported by atmc-plugin's INC adapter: it "
            "needs 3.10 or newer (PT2E on torch >= 2.11, the 3.x config/algorithm registries). "
            "Upgrade with: pip install -U 'neural-compressor-pt>=3.10'."
        )
