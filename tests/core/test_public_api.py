"""The package's exported names are a contract (httpx-style check)."""

from __future__ import annotations

import activecad


def test_top_level_exports() -> None:
    assert set(activecad.__all__) == {"ActivecadError", "InputError", "__version__"}
    for name in activecad.__all__:
        assert hasattr(activecad, name)
