"""Checks of the ``split`` filter of searches and listings: an unknown split is refused like an unknown label.

Kept apart from :class:`app.service.Service` (which holds the label check) so that routes can share it; it reads the
service's cached statistics the same way (stale first, fresh only when the value is not found).
"""

from __future__ import annotations

from app.errors import ApiError
from app.service import Service

NO_SPLIT = "(none)"  # how the statistics count rows without a split: not a split a filter can name


async def check_split(service: Service, split: str | None, field_name: str = "split") -> str | None:
    """``split`` as a filter (None for none), or 422 naming the collection's splits when no image is in it."""
    if not split:
        return None
    known = set((await service.stats(min_age_s=float("inf"))).get("splits", {})) - {NO_SPLIT}
    if split not in known:
        known = set((await service.stats(min_age_s=0.0)).get("splits", {})) - {NO_SPLIT}
    if split not in known:
        raise ApiError(
            422,
            "unknown_split",
            f"{field_name}: no image in the collection is in split {split!r}; the collection's splits are "
            f"{sorted(known)}",
            details=[{"field": field_name, "message": f"unknown split {split!r}"}],
        )
    return split
