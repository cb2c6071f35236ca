"""The commands of ``python -m avatar_core``: one module a command (its options, progress bar,
printed lines and exit status), each calling the library. ``avatar_core.__main__.COMMANDS`` is
the one table of them."""
