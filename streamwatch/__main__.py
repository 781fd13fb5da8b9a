"""``python -m streamwatch`` runs the command-line interface."""

from streamwatch.cli import entry

entry()
