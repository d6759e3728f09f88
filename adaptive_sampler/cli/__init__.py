"""The `adaptive-sampler` command line: the app, `main()`, and the one place that turns errors into one line.

One module per command (`sample`, `evaluate`, `calibrate`, `tune`, `stats`, `schedules`); their options are
pydantic models, one flag per field, and their --help ends with examples. The commands raise the library's errors
unchanged; `FlagCommand` maps a `FieldError`'s field, or a pydantic error's location, to the flag of the command
that ran, and `main()` prints "error: --flag: ..." (exit 2).
"""

from __future__ import annotations

import sys
from typing import Any

import typer
import typer.core
from pydantic import ValidationError

from adaptive_sampler._lazy import MissingExtraError
from adaptive_sampler.cli.calibrate import EXAMPLES as CALIBRATE_EXAMPLES
from adaptive_sampler.cli.calibrate import calibrate_command
from adaptive_sampler.cli.common import CliError
from adaptive_sampler.cli.evaluate import eval_command
from adaptive_sampler.cli.sample import sample_command
from adaptive_sampler.cli.schedules import list_command, show_command
from adaptive_sampler.cli.stats import stats_command
from adaptive_sampler.cli.tune import tune_command
from adaptive_sampler.errors import FieldError

__all__ = ["CliError", "FlagCommand", "app", "flag_error", "main"]

# A library field -> the command parameters that set it, first match wins; a field not listed is its parameter's
# name (the parameters of sample, eval and tune are the fields of their options models).
_PARAMS_OF_FIELD: dict[str, tuple[str, ...]] = {
    "num_steps": ("steps",),
    "policy": ("policy", "name"),  # a catalogue entry: --policy learned:NAME, or `schedules show NAME`
    "threshold": ("monitor",), "distance": ("monitor",),  # the parts of a --monitor spec
    "json": ("json_path",),  # --json (sample, eval): its parameter is json_path
    "grid_size": ("dp_grid",), "chunks": ("n",), "n_trials": ("trials",), "url": ("storage",),  # tuning
}


def _flag(field: str, command: typer.core.TyperCommand) -> str | None:
    """The flag (or argument metavar) of `command` that sets `field`, or None if it has none."""
    params = {param.name: param for param in command.params}
    for name in _PARAMS_OF_FIELD.get(field, (field,)):
        param = params.get(name)
        if isinstance(param, typer.core.TyperOption):
            return param.opts[0]
        if isinstance(param, typer.core.TyperArgument):
            return param.metavar or name.upper()
    return None


def flag_error(exc: ValueError, command: typer.core.TyperCommand) -> CliError:
    """`exc` as one line that names the flag of `command` the user typed: a `FieldError` by its field, a pydantic
    `ValidationError` by its location; any other ValueError keeps its message."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        where = _flag(field, command) or field
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):  # raised by a validator (a model validator's: its own field)
            return CliError((_flag(cause.root, command) or where) + str(cause)[len(cause.root):])
        rule = str(err["msg"]).removeprefix("Value error, ")
        return CliError(f"{where}: {err.get('input')!r}{' ' if rule.startswith('is ') else ' — '}{rule}")
    if isinstance(exc, FieldError):
        flag = _flag(exc.root, command)
        return CliError(str(exc) if flag is None else flag + str(exc)[len(exc.root):])
    return CliError(str(exc))


class FlagCommand(typer.core.TyperCommand):
    """A command whose bad input (any ValueError: `FieldError`, pydantic's `ValidationError`) leaves it as a
    `CliError` naming the flag (`flag_error`)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ValueError as exc:
            raise flag_error(exc, self) from None
        except MissingExtraError as exc:  # an optional dependency: its message says how to install it
            raise CliError(str(exc)) from None


# the end of each command's --help
_EXAMPLES = {
    "sample": ("adaptive-sampler sample --steps 10 --policy karras --out grid.png",
               "adaptive-sampler sample --model embedded-t2i --prompt 'a red shoe' --solver dpmpp-2m --steps 8 "
               "--policy learned:embedded-t2i/dpmpp-2m-8",
               "adaptive-sampler sample --steps 20 --monitor x0-l2 --json run.json"),
    "eval": ("adaptive-sampler eval --steps 10 --policy trailing",
             "adaptive-sampler eval --solver unipc --steps 6 --policy file:my_schedule.json --n 500",
             "adaptive-sampler eval --model DIR --features clip:CLIP_DIR --reference ref.npz --prompts prompts.txt"),
    "calibrate": CALIBRATE_EXAMPLES,
    "tune": ("adaptive-sampler tune --steps 6 --solver dpmpp-2m --trials 20",
             "adaptive-sampler tune --steps 5,10 --trials 40 --export policies",
             "adaptive-sampler tune --model embedded-t2i --prompts prompts.txt --objective fidelity --steps 8"),
    "stats": ("adaptive-sampler stats --images real_images/ --out ref.npz",
              "adaptive-sampler stats --npy samples.npy --features inception:pt_inception.pth --out ref.npz"),
    "list": ("adaptive-sampler schedules list",),
    "show": ("adaptive-sampler schedules show sd15/ays-10 --format diffusers",
             "adaptive-sampler schedules show my_schedule.json --steps 12 --format comfyui"),
}


def _epilog(command: str) -> str:
    """The examples of `command` as its --help epilog (one paragraph each: rich joins single lines)."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in _EXAMPLES[command])


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Fewer network passes per diffusion sample.")
app.command("sample", cls=FlagCommand, epilog=_epilog("sample"))(sample_command)
app.command("eval", cls=FlagCommand, epilog=_epilog("eval"))(eval_command)
app.command("calibrate", cls=FlagCommand, epilog=_epilog("calibrate"))(calibrate_command)
app.command("tune", cls=FlagCommand, epilog=_epilog("tune"))(tune_command)
app.command("stats", cls=FlagCommand, epilog=_epilog("stats"))(stats_command)
schedules_app = typer.Typer(no_args_is_help=True, help="The schedule catalogue.")
schedules_app.command("list", cls=FlagCommand, epilog=_epilog("list"))(list_command)
schedules_app.command("show", cls=FlagCommand, epilog=_epilog("show"))(show_command)
app.add_typer(schedules_app, name="schedules")


def _parse_error(exc: typer.TyperException) -> str:
    """A typer parse error as "--flag: 'VALUE' rule" when it is a bad value of an option; else typer's message."""
    param = getattr(exc, "param", None)
    if isinstance(exc, typer.BadParameter) and isinstance(param, typer.core.TyperOption) and exc.message:
        cause = exc.__cause__
        shown = ""
        if isinstance(cause, ValidationError) and cause.errors():
            shown = f"{cause.errors()[0].get('input')!r} "
        rule = exc.message[:1].lower() + exc.message[1:]
        return f"{param.opts[0]}: {shown}{rule if rule.startswith('is ') else '— ' + rule}"
    option = getattr(exc, "option_name", None)  # an unknown option, or an option without its value
    if isinstance(option, str) and option.startswith("-"):
        if type(exc).__name__ == "NoSuchOption":
            close = sorted(getattr(exc, "possibilities", None) or ())
            return f"{option}: is not an option of this command{f' (did you mean {close[0]}?)' if close else ''}"
        return f"{option}: {exc.format_message().replace(f'Option {option!r} ', '', 1)}"
    return exc.format_message()


def main() -> None:
    """Entry point: one-line errors naming the flag, no tracebacks, exit status 2 for bad input."""
    try:
        app(standalone_mode=False)
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # typer's parse errors (its vendored click), made one line
        message = _parse_error(exc)
        if message:  # empty when a bare group printed its help (no_args_is_help)
            typer.echo(f"error: {message}", err=True)
        sys.exit(exc.exit_code)
