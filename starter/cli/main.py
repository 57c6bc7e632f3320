"""The ``taskomatic`` command line.

Exit status: 0 success; 1 a task failed; 2 the request was refused (bad input, named field);
3 a service (Temporal, PostgreSQL) could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from pydantic import ValidationError

from starter import RequestError
from starter.cli import access, clusters, hosts, lab, operations, reconcile, storage, tasks, vms
from starter.cli.common import ServiceUnavailable, errors
from taskomatic.codec import CodecError
from taskomatic.errors import ErrorType, error_info
from taskomatic.logs import configure_logging
from taskomatic.settings import get_settings


def parser() -> argparse.ArgumentParser:
    """The whole command line: each noun module adds its nouns, in the order help lists them."""
    p = argparse.ArgumentParser(prog="taskomatic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    nouns = p.add_subparsers(dest="noun", required=True)
    for module in (clusters, hosts, vms, storage, tasks, reconcile, access, lab, operations):
        module.add_commands(nouns)
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default: the process's); a command that ``takes_rest`` gets the arguments
    it does not define in ``args.rest``, any other command refuses them (exit status 2)."""
    p = parser()
    args, rest = p.parse_known_args(argv)
    if rest and not getattr(args, "takes_rest", False):
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    try:
        settings = get_settings()
    except ValidationError as err:  # a TASKOMATIC_* variable (or .taskomatic/env) is unusable
        errors.print(f"[red]error:[/] {settings_problem(err)}", highlight=False)
        sys.exit(3)
    # The CLI reports problems itself; its own log lines would only repeat them.
    configure_logging(settings.log_format, "error")
    code = run(args)
    if argv is None and args.noun != "dev":  # dev: interpreter teardown stops its PostgreSQL
        # A real process skips interpreter teardown, which the SDK's runtime threads can trip
        # over (PyGILState_Release aborts; see worker.py), turning success into a crash.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def settings_problem(err: ValidationError) -> str:
    """The first problem of the settings, naming its ``TASKOMATIC_*`` variable."""
    first = err.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check across settings names its variable itself
        return message
    return f"TASKOMATIC_{'_'.join(str(p) for p in first['loc']).upper()}: {message}"


def run(args: argparse.Namespace) -> int:
    """Run the chosen verb; its exit status, or the one its error maps to."""
    try:
        outcome = args.fn(args)
        return int(asyncio.run(outcome) if asyncio.iscoroutine(outcome) else outcome)
    except RequestError as err:
        errors.print(f"[red]error:[/] {err}")
        return 2
    except (ServiceUnavailable, CodecError) as err:  # CodecError: keys or TLS files unusable
        errors.print(f"[red]error:[/] {err}")
        return 3
    except Exception as err:
        info = error_info(err)
        if info.type is ErrorType.DATABASE_UNAVAILABLE:
            errors.print(f"[red]error:[/] {info.message}")
            return 3
        raise
    except KeyboardInterrupt:
        return 130
