"""The one error type for bad input: which field, what value, which rule it broke."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class FieldError(ValueError):
    """Bad input, located: `field` (e.g. "num_steps", "timesteps[3]"), the offending `value` and the `rule` it broke.

    Its message is "field: value rule", e.g. "num_steps: 0 is outside [1, 1000] (the training timesteps)" (a string
    value is quoted: "solver: 'euler' is not one of ..."). The CLI maps `field` to the flag the user typed; nothing
    parses the message.
    """

    def __init__(self, field: str, value: Any, rule: str) -> None:
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"{field}: {value!r} {rule}" if isinstance(value, str) else f"{field}: {value} {rule}")

    @property
    def root(self) -> str:
        """The field without its index: "timesteps[3]" -> "timesteps"."""
        return self.field.split("[", 1)[0]


class FileFieldError(FieldError):
    """Bad content in a file that the input `field` names (a `--policy file:PATH`, a `--model` folder's config.json).

    Its message is "field: FILE: inner: value rule", e.g. "policy: file:/tmp/x.json: timesteps[2]: 1200 is outside
    [0, 999]", or "field: FILE: rule" for the file as a whole ("model: /m/config.json: is not valid JSON (…)").
    The CLI maps `field` to the flag as for any FieldError, so an `inner` field is never taken for a flag.
    """

    _WHOLE = object()

    def __init__(self, field: str, file: str, rule: str, inner: str | None = None, value: Any = _WHOLE) -> None:
        self.file, self.inner = file, inner
        shown = "" if value is FileFieldError._WHOLE else (repr(value) if isinstance(value, str) else str(value))
        if len(shown) > 80:
            shown = shown[:77] + "…"
        where = f"{inner}: " if inner else ""
        message = f"{field}: {file}: {where}{shown}{' ' if shown else ''}{rule}"
        ValueError.__init__(self, " ".join(message.splitlines()))  # one line, whatever the file held
        self.field, self.value, self.rule = field, (None if value is FileFieldError._WHOLE else value), rule


def did_you_mean(value: str, names: Iterable[str]) -> str:
    """" (did you mean 'karras'?)" for the name in `names` closest to a mistyped `value` (difflib), or "". A form with
    a parameter (`adaptive:<tolerance>`) matches by its head and keeps the value's parameter (`adaptve:0.1`)."""
    heads = {name.partition(":")[0]: name for name in names}
    head, colon, rest = value.partition(":")
    close = difflib.get_close_matches(head, list(heads), n=1)
    if not close:
        return ""
    guess = close[0] + colon + rest if colon and ":" in heads[close[0]] else heads[close[0]]
    return f" (did you mean {guess!r}?)"


def first_line(exc: BaseException) -> str:
    """The line of `exc`'s message that says what went wrong, for a one-line rule: a "size mismatch" line where
    there is one (torch lists every tensor), without SQLAlchemy's " [SQL: …]" tail, at most 300 characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = next((x for x in lines if "size mismatch" in x), lines[0] if lines else type(exc).__name__)
    line = line.split(" [SQL:", 1)[0]
    return line if len(line) <= 300 else line[:297] + "…"


def validation_parts(exc: Any, fields: Any = ()) -> tuple[str, Any, str]:
    """(inner field, value, rule) of a pydantic `ValidationError`'s first error, for a `FileFieldError`: the location
    as "a.b[2]", a validator's `FieldError` by its own field, value and rule; `fields` (the allowed names) go into
    the rule of an extra key. Duck-typed: this module imports nothing."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    where = "".join(f"[{p}]" if p.isdigit() else (f".{p}" if i else p) for i, p in enumerate(loc))
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):
        parent = where.rsplit(".", 1)[0] + "." if "." in where else ""
        return parent + cause.field, cause.value, cause.rule
    if err["type"] == "missing":
        return where, FileFieldError._WHOLE, "is required"
    if err["type"] == "extra_forbidden":
        known = f" (the fields are {', '.join(fields)})" if fields else ""
        return where, FileFieldError._WHOLE, f"is not a field here{known}"
    rule = str(err["msg"]).removeprefix("Value error, ")
    return where, err.get("input"), rule if rule.startswith("is ") else f"— {rule}"
