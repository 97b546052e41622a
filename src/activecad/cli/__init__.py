"""The ``activecad`` command line (typer). Each command group lives in its own module."""
