"""Write ``.env.example`` from :class:`app.settings.Settings` (every ``MSIR_*`` field: description, type, default)
plus the variables of ``docker-compose.yml``.

    python scripts/gen_env_example.py           # rewrite .env.example
    python scripts/gen_env_example.py --check   # exit 1 when .env.example is out of date (tests/test_deploy.py)
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.settings import Settings  # noqa: E402  (after the path setup: runs from a checkout)

TARGET = REPO / ".env.example"
WIDTH = 110

# Variables of docker-compose.yml that are not service settings: (name, value written, active?, description).
COMPOSE_VARS: list[tuple[str, str, bool, str]] = [
    (
        "POSTGRES_PASSWORD",
        "",
        True,
        "Password of the PostgreSQL user 'msir'. Required: docker compose refuses to start while it is empty, and "
        "there is no default. It is placed in MSIR_DATABASE_URL, so use URL-safe characters, e.g. the output of "
        '`python -c "import secrets; print(secrets.token_hex(24))"`.',
    ),
    (
        "API_BIND",
        "127.0.0.1",
        False,
        "Host address the API port is published on (127.0.0.1: this machine only; 0.0.0.0: every interface).",
    ),
    ("API_PORT", "8000", False, "Host port of the CPU API (service api)."),
    ("GPU_API_PORT", "8001", False, "Host port of the GPU API (service api-gpu, profile gpu)."),
    ("MODELS_DIR", "./demo/checkpoint", False, "Host folder of checkpoints, mounted read-only at /models."),
    ("IMAGES_DIR", "./demo/images", False, "Host folder of images for the indexer, mounted read-only at /images."),
    (
        "COMPOSE_PROJECT_NAME",
        "msir",
        True,
        "Compose project name: prefix of the containers, network and volumes (Compose v1 has no `name` key).",
    ),
    (
        "ENV_FILE",
        ".env",
        False,
        "File of MSIR_* settings passed to the API containers (env_file), relative to docker-compose.yml.",
    ),
    (
        "POSTGRES_IMAGE",
        "postgres:16",
        False,
        "PostgreSQL image. Without Docker Hub: one built from Debian's packages, "
        "`docker build -t msir-postgres:15 docker/postgres` (same variables, volume and pg_isready).",
    ),
    (
        "BASE_IMAGE",
        "python:3.11-slim-bookworm",
        False,
        "Base of the msir image: any Debian-like image whose `python` is Python 3.11 with venv "
        "(docker/offline/base_image.sh builds one with debootstrap).",
    ),
    (
        "WHEELS",
        "",
        False,
        "Non-empty: install Python packages only from docker/wheels, no index (docker/offline/wheelhouse.sh "
        "fills it). Empty: from PyPI.",
    ),
]

# Settings written as active lines (the others stay commented out, i.e. at their defaults).
ACTIVE = {"api_key"}
KEY_HINT = 'Generate one with `python -c "import secrets; print(secrets.token_urlsafe(32))"`.'


def env_name(field: str) -> str:
    return f"MSIR_{field.upper()}"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        name = " | ".join(_type_name(a) for a in inner)
        return f"{name}, optional" if len(inner) < len(args) else name
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is list:
        return "list (comma-separated or JSON)"
    names = {Path: "path", str: "string", int: "integer", float: "number", bool: "true/false", SecretStr: "secret"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if isinstance(item, getattr(annotated_types, attr.capitalize())):
                parts.append(f"{symbol} {getattr(item, attr)}")
    return ", ".join(parts)


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return None if info.default is PydanticUndefined else info.default


def render_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, SecretStr):
        return ""
    return str(value)


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)


def render() -> str:
    lines = [
        "# msir environment: copy to .env (git-ignored) and fill in. Read by `docker compose` (interpolation and",
        "# env_file) and by msir-serve (app.settings.Settings reads MSIR_* variables and a .env in its working",
        "# directory). Generated by scripts/gen_env_example.py from app/settings.py: edit those, not this file.",
        "",
        "# ---- docker compose -----------------------------------------------------------------------------------",
    ]
    for name, value, active, description in COMPOSE_VARS:
        lines += ["", *_comment(description), f"{'' if active else '# '}{name}={value}"]
    lines += [
        "",
        "# ---- msir-serve (app.settings.Settings) ----------------------------------------------------------------",
        "# Commented-out lines show the default. In docker compose, MSIR_HOST, MSIR_PORT, MSIR_COLLECTION_DIR and",
        "# MSIR_DATABASE_URL are set by docker-compose.yml itself.",
    ]
    for field, info in Settings.model_fields.items():
        default = _default(info)
        kind = _type_name(info.annotation)
        bounds = _bounds(info)
        detail = f"Type: {kind}{f' ({bounds})' if bounds else ''}. Default: "
        detail += "unset." if default is None else f"{render_value(default) or '(empty)'}."
        description = (info.description or "").strip()
        if field == "api_key":
            description += " " + KEY_HINT
        lines += ["", *_comment(description), *_comment(detail)]
        active = field in ACTIVE
        lines.append(f"{'' if active else '# '}{env_name(field)}={'' if active else render_value(default)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if .env.example is not up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.is_file() else ""
        if current != text:
            sys.stderr.write(f"{TARGET} is out of date: run python scripts/gen_env_example.py\n")
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    sys.stderr.write(f"wrote {TARGET} ({len(Settings.model_fields)} MSIR_ settings)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
