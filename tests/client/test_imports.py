"""The client is light: importing it loads neither torch, FastAPI, FAISS nor SQLAlchemy."""

from __future__ import annotations

import subprocess
import sys


def test_client_imports_no_server_code() -> None:
    code = (
        "import sys, msir_client; "
        "heavy = sorted(m for m in ('torch', 'fastapi', 'faiss', 'sqlalchemy', 'app', 'indexer', 'models', "
        "'training', 'msir_core', 'msir_data', 'starlette') "
        "if m in sys.modules); print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""


def test_answers_are_the_servers_own_models() -> None:
    from msir_client import client
    from msir_schemas import api as schemas

    assert client.SearchResponse is schemas.SearchResponse
    assert client.CollectionInfo is schemas.CollectionInfo
