"""The parts of uvicorn's internal ``HttpToolsProtocol`` that ``app.connections.GuardedHttpToolsProtocol`` relies on.

uvicorn does not promise these between releases; pyproject pins uvicorn to the releases this test has passed on.
When a new uvicorn changes one of them, this test names what changed instead of the edge failing at run time.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.connections import GuardedHttpToolsProtocol

REPO = Path(__file__).resolve().parents[2]

# method -> the parameter names (after self) the subclass overrides it with and calls super() with
OVERRIDDEN = {
    "connection_made": ["transport"],
    "connection_lost": ["exc"],
    "data_received": ["data"],
    "on_message_begin": [],
    "on_headers_complete": [],
    "on_body": ["body"],
    "on_message_complete": [],
}
# attributes of the protocol the subclass reads (set by uvicorn's __init__ or its callbacks)
READ_ATTRIBUTES = ("client", "connections", "cycle", "flow", "headers", "loop", "transport")


def test_installed_uvicorn_is_in_the_pinned_range() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [Requirement(d) for d in deps if Requirement(d).name == "uvicorn"]
    assert len(pins) == 1, "pyproject lists uvicorn once"
    assert pins[0].specifier, "uvicorn must be pinned to a range (app/connections.py subclasses its internals)"
    assert pins[0].specifier.contains(version("uvicorn")), (
        f"uvicorn {version('uvicorn')} is outside the tested range {pins[0].specifier}"
    )


@pytest.mark.parametrize("name", sorted(OVERRIDDEN))
def test_overridden_methods_keep_their_signature(name: str) -> None:
    assert name in vars(GuardedHttpToolsProtocol), f"the subclass no longer overrides {name}: update OVERRIDDEN"
    parent = getattr(HttpToolsProtocol, name, None)
    assert callable(parent), f"uvicorn's HttpToolsProtocol has no {name}() any more"
    params = [p for p in inspect.signature(parent).parameters if p != "self"]
    assert params == OVERRIDDEN[name], f"HttpToolsProtocol.{name}{inspect.signature(parent)} changed"


@pytest.mark.parametrize("attribute", READ_ATTRIBUTES)
def test_read_attributes_are_still_set_by_uvicorn(attribute: str) -> None:
    source = inspect.getsource(HttpToolsProtocol)
    assert re.search(rf"self\.{attribute}\s*(:[^=\n]+)?=", source), (
        f"uvicorn's HttpToolsProtocol no longer sets self.{attribute}, which app/connections.py reads"
    )


def test_cycle_has_what_a_refusal_touches() -> None:
    source = inspect.getsource(RequestResponseCycle)
    for attribute in ("response_started", "disconnected", "message_event"):
        assert re.search(rf"self\.{attribute}\s*(:[^=\n]+)?=", source), f"RequestResponseCycle.{attribute} is gone"


def test_protocol_constructor_is_forwarded_unchanged() -> None:
    # The subclass takes *args/**kwargs and passes them on: uvicorn must still build it with keywords it knows.
    params = list(inspect.signature(HttpToolsProtocol.__init__).parameters)
    assert params[:4] == ["self", "config", "server_state", "app_state"], params
