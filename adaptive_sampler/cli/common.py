"""What the commands share: the one-line `CliError`, a command built from an options model (`options_command`), and
the `--network-rows` text as the library's row policy."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from pydantic import BaseModel

if TYPE_CHECKING:
    import torch

    from adaptive_sampler.model_adapter import RowPolicy

Options = TypeVar("Options", bound=BaseModel)
# a field whose flag is not --<field-name>
_FLAGS = {"json_path": "--json"}


class CliError(Exception):
    """An error already phrased for the user, flag included where it has one; `main()` prints it as one line.

    Bad input that has a field raises `FieldError` instead: the CLI maps its field to the flag (see `__init__.py`).
    """


def _cli_type(annotation: Any) -> Any:
    """The type typer parses a field as: tuples are comma-separated text, Literals are text (the model checks)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _cli_type(inner[0]) | None if len(inner) == 1 else str
    if typing.get_origin(annotation) in (tuple, typing.Literal):
        return str
    return annotation


def _cli_default(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else value


def options_command(model: type[Options]) -> Callable[[Callable[[Options], None]], Callable[..., None]]:
    """Turn `run(options)` into a command whose options are the fields of `model`: one `--<field-name>` option per
    field, with its default and its description as help, grouped in `--help` by the model's `help_panels` (panel ->
    field names) if it has them; the values are validated once, by `model` (its `ValidationError` or a `FieldError`
    names the field, which the CLI maps to the flag)."""
    hints = typing.get_type_hints(model)
    panel_of = {name: panel for panel, names in getattr(model, "help_panels", {}).items() for name in names}
    signature = inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=_cli_type(hints[name]),
                          default=typer.Option(... if info.is_required() else _cli_default(info.default),
                                               *_FLAGS.get(name, "").split(), help=info.description,
                                               rich_help_panel=panel_of.get(name)))
        for name, info in model.model_fields.items()
    ])

    def decorate(run: Callable[[Options], None]) -> Callable[..., None]:
        def command(**flags: Any) -> None:
            run(model.model_validate(flags))

        command.__name__, command.__doc__ = run.__name__, run.__doc__
        command.__signature__ = signature  # type: ignore[attr-defined]
        return command

    return decorate


def row_policy(network_rows: str, device: torch.device) -> RowPolicy:
    """`--network-rows` (e.g. `auto`, `8`, `fixed:8`, `buckets:4`, `all`) as the adapter's row policy on `device`
    (see `model_adapter.row_spec_from_text`)."""
    from adaptive_sampler.model_adapter import RowPolicy, row_spec_from_text

    return RowPolicy.parse(row_spec_from_text(network_rows), device)


def decode_rows(policy: RowPolicy) -> int:
    """The fixed chunk the VAE decodes in: the fixed row count if one is given, else 8 (a sample's image then does
    not depend on its batch either)."""
    return policy.size if policy.kind == "fixed" else 8
