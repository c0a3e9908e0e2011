"""Run ``msir-index`` as ``python -m indexer.cli``."""

from indexer.cli.commands import app

app()
