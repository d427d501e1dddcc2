"""``launcher``: leader, worker, local and dry-run.

``main`` turns every user-facing failure into one line on stderr and a
distinct exit code (see ``launcher.errors.ExitCode``); never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from ..errors import ExitCode, LauncherError
from ..pid1 import become_init_if_pid1
from .dry_run import dry_run
from .leader import leader, parse_leader_args
from .local import local
from .preflight import preflight
from .worker import worker

__all__ = ["cli", "main", "parse_leader_args"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lws-triton-launcher")
def cli() -> None:
    """Serve one model with Triton across the pods of a LeaderWorkerSet group."""


cli.add_command(leader)
cli.add_command(worker)
cli.add_command(local)
cli.add_command(dry_run)
cli.add_command(preflight)


def main(argv: Sequence[str] | None = None, prog_name: str = "launcher") -> int:
    become_init_if_pid1()
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name=prog_name,
                          standalone_mode=False)
    except LauncherError as exc:
        click.echo(f"{prog_name}: error: {exc}", err=True)
        return int(exc.exit_code)
    except click.BadParameter as exc:
        click.echo(f"{prog_name}: error: {exc.format_message()}", err=True)
        return int(ExitCode.CONFIG_INVALID)
    except click.UsageError as exc:
        hint = f" (see {prog_name} {exc.ctx.info_name} --help)" if exc.ctx and exc.ctx.parent else ""
        click.echo(f"{prog_name}: error: {exc.format_message()}{hint}", err=True)
        return int(ExitCode.USAGE)
    except click.Abort:
        return int(ExitCode.INTERRUPTED)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
