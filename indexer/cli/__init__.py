"""``msir-index``: the command line of the indexer (commands, shared options, output, exit codes)."""

from indexer.cli.commands import app

__all__ = ["app"]
