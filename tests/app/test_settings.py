"""Settings: environment variables with the MSIR_ prefix, .env, validation, documentation of every field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.cli import parse_args
from app.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MSIR_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.api_key is None and s.read_requires_key is False
    assert s.max_upload_bytes == 20 * 1024 * 1024
    assert s.max_pixels == 40_000_000
    assert (s.max_k, s.default_k, s.port) == (100, 10, 8000)
    assert s.checkpoint is None and s.database_url is None
    assert s.cors_origins == []
    assert s.batching_enabled and s.batch_max_size == 16
    assert (s.torch_threads, s.faiss_threads) == (1, 1)


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("MSIR_MAX_K=50\nMSIR_API_KEY=from-dotenv\nMSIR_PORT=9000\n")
    monkeypatch.setenv("MSIR_PORT", "9100")  # the environment wins over .env
    monkeypatch.setenv("MSIR_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("MSIR_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("MSIR_DATABASE_URL", "postgresql+psycopg://msir:hunter2@db/msir")
    s = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert "hunter2" not in repr(s) and s.database_url is not None
    assert s.database_url.get_secret_value().endswith("@db/msir")
    assert s.max_k == 50 and s.port == 9100
    assert s.api_key is not None and s.api_key.get_secret_value() == "from-dotenv"
    assert "from-dotenv" not in repr(s)  # the key never shows up in logs
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.log_level == "debug"
    monkeypatch.setenv("MSIR_CORS_ORIGINS", '["https://c.example"]')
    assert Settings(_env_file=None).cors_origins == ["https://c.example"]  # type: ignore[call-arg]


def test_an_empty_key_is_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSIR_API_KEY", "  ")
    assert Settings(_env_file=None).api_key is None  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "value"),
    [("MSIR_MAX_K", "0"), ("MSIR_DEFAULT_K", "101"), ("MSIR_DEVICE", "tpu"), ("MSIR_BATCH_MAX_SIZE", "0")],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_every_field_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description and len(field.description) > 15, name


def test_cli_flags_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    args = parse_args(["--collection-dir", "/c", "--port", "1234", "--device", "cpu"])
    assert (args.collection_dir, args.port, args.device) == ("/c", 1234, "cpu")
