"""Suite-wide pytest wiring: the `cuda` and `postgres` markers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

POSTGRES_URL = os.environ.get("MSIR_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _postgres_reachable(url: str) -> str | None:
    """None when the server answers, else the reason."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any driver/connection failure means "not reachable" here
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of the test PostgreSQL server; skip without it, but fail in CI where it must exist."""
    reason = _postgres_reachable(POSTGRES_URL)
    if reason is not None:
        message = f"PostgreSQL not reachable at {POSTGRES_URL} ({reason}); set MSIR_TEST_DATABASE_URL"
        if in_ci():
            pytest.fail(message + " — required when CI=true")
        pytest.skip(message)
    yield POSTGRES_URL
