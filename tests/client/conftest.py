"""The service test fixtures (tiny real collection, real msir-serve) reused by the client's tests."""

from tests.app.conftest import (  # noqa: F401 - pytest finds fixtures by name in this module
    _shared_server_slot,
    checkpoint,
    image_files,
    postgres_collection,
    shared_server,
    sqlite_template,
)
