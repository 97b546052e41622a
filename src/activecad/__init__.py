"""activecad: annotation-efficient computer-aided detection in CT and chest radiographs.

The package is split by concern, following the flow of data (README, "Where things live"):
``io`` (file formats) -> ``data`` (preprocessing) -> ``models`` -> ``active`` / ``retrieval``
-> ``metrics``, with ``phantom`` generating cohorts in the real formats and ``cli``
exposing it all as the ``activecad`` command.
"""

from importlib.metadata import PackageNotFoundError, version

from activecad.errors import ActivecadError, InputError

try:
    __version__ = version("activecad")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["ActivecadError", "InputError", "__version__"]
