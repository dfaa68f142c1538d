"""``tilesegd``: the command group, logging, and errors -> messages + exit codes.

Sub-commands are imported only when used, so ``tilesegd --help`` is instant (torch, rasterio
and friends load inside the commands).
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback

import click

from tilesegd.cli.options import configure_logging, verbosity_options
from tilesegd.errors import EXIT_INTERRUPTED, EXIT_USAGE, TilesegdError
from tilesegd.storage.redact import redact
from tilesegd.version import __version__

COMMANDS = {
    "run": "tilesegd.cli.run:run",
    "train": "tilesegd.cli.train:train",
    "export": "tilesegd.cli.export:export",
    "eval": "tilesegd.cli.eval:eval_cmd",
}

EPILOG = """\b
Exit codes: 0 ok; 1 usage/config error; 2 bad command line; 3 bad model file;
4 some scenes failed (others finished, see run.json); 5 output locked by another run;
6 output not writable (disk full); 75 interrupted (SIGTERM): rerun to resume.
"""


class LazyGroup(click.Group):
    """A group that imports each sub-command on first use and turns errors into messages."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attr = COMMANDS[name].split(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except ImportError:  # a command whose module is missing in this build
                return None
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TilesegdError as exc:
            click.echo(f"Error: {redact(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted: rerun the same command to resume.", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                click.echo(redact(traceback.format_exc()), err=True)
            click.echo(
                f"Error: internal error {type(exc).__name__}: {redact(exc)} (rerun with -vv for the "
                "traceback, and report it)",
                err=True,
            )
            ctx.exit(EXIT_USAGE)


@click.group(
    cls=LazyGroup,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="tilesegd")
@verbosity_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Seamless, bounded-memory semantic segmentation of very large aerial and drone imagery.

    \b
    tilesegd run    --input scenes/ --model model.pt2 --output out/
    tilesegd train  --images imgs/ --masks masks/ --classes classes.csv --output runs/a
    tilesegd export runs/a/best.ckpt --output model.pt2
    tilesegd eval   --model model.pt2 --images imgs/ --masks masks/ --output eval/
    """
    obj = ctx.ensure_object(dict)
    configure_logging(int(obj.get("verbose", 0)), bool(obj.get("quiet", False)))


def main() -> None:
    """Console entry point."""
    cli(prog_name="tilesegd")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
