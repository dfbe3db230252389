"""Numbers as people read them: one formatter of byte counts for every report, model card and command."""

from __future__ import annotations

from typing import Any


def format_bytes(n: Any, missing: str = "–") -> str:
    """``1.50 GiB``, ``12.00 MiB``, ``512 B`` (binary units, two decimals); ``missing`` where there is no number."""
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        return missing
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"
