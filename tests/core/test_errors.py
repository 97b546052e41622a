"""InputError messages name the file, the problem and the fix on one line."""

from __future__ import annotations

from activecad.errors import InputError


def test_message_names_path_problem_and_fix() -> None:
    error = InputError("column 'coordX' is missing", path="a.csv", fix="add the column.")
    # The fix starts a sentence of its own.
    assert str(error) == "a.csv: column 'coordX' is missing. Add the column."
    assert "\n" not in str(error)


def test_input_error_is_a_value_error_for_library_callers() -> None:
    assert isinstance(InputError("x"), ValueError)
