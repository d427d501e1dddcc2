"""``launcher``: leader, worker, local, dry-run, preflight and infer.

``main`` turns every user-facing failure into one line on stderr and a
distinct exit code (see ``launcher.errors.ExitCode``); never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import click

from ..config import LaunchConfig
from ..errors import ExitCode, LauncherError
from ..pid1 import become_init_if_pid1

__all__ = ["cli", "main", "parse_leader_args"]

# Each command's module is imported only when that command runs: a launch starts sooner without the
# other commands' imports (a worker needs no mpirun plan, a local run no Kubernetes client).
COMMANDS = {"leader": "leader:leader", "worker": "worker:worker", "local": "local:local",
            "dry-run": "dry_run:dry_run", "preflight": "preflight:preflight", "infer": "infer:infer"}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, _, attribute = COMMANDS[name].partition(":")
        command: Any = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lws-triton-launcher")
def cli() -> None:
    """Serve one model with Triton across the pods of a LeaderWorkerSet group."""


def parse_leader_args(argv: Sequence[str]) -> LaunchConfig:
    """The config ``launcher leader ARGV`` would run with (used to check the chart's args)."""
    from .leader import parse_leader_args as parse

    return parse(argv)


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
