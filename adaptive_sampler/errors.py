"""The one error type for bad input: which field, what value, which rule it broke."""

from __future__ import annotations

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
