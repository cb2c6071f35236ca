"""``python -m avatar_core export-ply``: the old name of ``export`` (same code path, see ``cli_export``)."""

from avatar_core.io.cli_export import add_arguments, run

__all__ = ["add_arguments", "run"]
