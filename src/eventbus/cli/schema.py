"""``eventbus schema``: check, register and export the Avro schemas of an app's models.

    eventbus schema check app:bus --registry URL [--level BACKWARD]   # or --dir schemas/
    eventbus schema register app:bus --registry URL
    eventbus schema export app:bus [--dir schemas/]

``check`` exits with `EXIT_INCOMPATIBLE` when a model breaks the level, naming the subject and
the fields; a subject the registry (or folder) does not have yet passes, as new. The registry
URL may also come from ``EVENTBUS_SCHEMA_REGISTRY``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from eventbus.cli.common import EXIT_DENIED, EXIT_USAGE, CliError, load_bus, log_level_option

if TYPE_CHECKING:
    from eventbus.avro.contracts import Verdict

__all__ = ["EXIT_INCOMPATIBLE", "add_parser"]

EXIT_INCOMPATIBLE = 9
"""``eventbus schema check`` found a model that breaks the compatibility level."""

_REGISTRY_VAR = "EVENTBUS_SCHEMA_REGISTRY"


def cmd_schema(args: argparse.Namespace) -> int:
    try:
        from eventbus.avro import SchemaRegistry, SchemaRegistryError, contracts
    except ImportError as exc:  # the avro extra is not installed
        raise CliError(str(exc), EXIT_USAGE) from None
    bus = load_bus(args.app)
    found = contracts.contracts_of(bus)
    command = args.schema_command
    if not found:
        print(f"{args.app} declares no pydantic model: no schema to {command}")
        return 0

    if command == "export":
        if args.dir is None:
            print(json.dumps({c.subject: c.schema for c in found}, indent=2))
        else:
            for path in contracts.export(found, Path(args.dir)):
                print(f"wrote {path}")
        return 0

    level = getattr(args, "level", "BACKWARD")
    if level not in contracts.LEVELS:
        raise CliError(f"--level {level}: one of {', '.join(contracts.LEVELS)}", EXIT_USAGE)
    if command == "check" and args.dir is not None:
        if not Path(args.dir).is_dir():  # else every subject would pass, as new
            raise CliError(f"--dir {args.dir}: no such folder of <subject>.avsc files", EXIT_USAGE)
        verdicts = anyio.run(
            functools.partial(contracts.check, found, level, folder=Path(args.dir))
        )
        return _report(verdicts, level)
    registry_url = args.registry or os.environ.get(_REGISTRY_VAR)
    if not registry_url:
        also = " (or --dir for a committed folder)" if command == "check" else ""
        raise CliError(f"give --registry URL{also}, or set {_REGISTRY_VAR}", EXIT_USAGE)

    async def with_registry() -> int:
        async with SchemaRegistry(registry_url) as registry:
            if command == "check":
                return _report(await contracts.check(found, level, registry=registry), level)
            for contract in found:
                schema_id = await registry.id_of(contract.subject, contract.text, register=True)
                print(f"{contract.subject}\tid {schema_id}\t{contract.model.__name__}")
            return 0

    try:
        return anyio.run(with_registry)
    except SchemaRegistryError as exc:  # said in one line, with the exit code that fits
        code = {401: EXIT_DENIED, 403: EXIT_DENIED, 409: EXIT_INCOMPATIBLE}.get(exc.status, 1)
        raise CliError(str(exc), code) from None


def _report(verdicts: list[Verdict], level: str) -> int:
    broken = 0
    for verdict in verdicts:
        contract = verdict.contract
        name = f"{contract.subject} ({contract.model.__name__})"
        if verdict.ok:
            print(f"ok      {name}: {level} against {verdict.against}")
            continue
        broken += 1
        print(f"BREAKS  {name}: {level}, used by: {'; '.join(contract.uses)}")
        for problem in verdict.problems:
            print(f"        {problem}")
    if broken:
        print(f"{broken} of {len(verdicts)} schemas break {level}")
        return EXIT_INCOMPATIBLE
    return 0


def add_parser(commands: Any) -> None:
    schema = commands.add_parser(
        "schema", help="check, register and export the Avro schemas of an app's models"
    )
    sub = schema.add_subparsers(dest="schema_command", required=True)
    check = sub.add_parser("check", help="exit 9 if a model breaks the compatibility level")
    check.add_argument("app", metavar="MODULE:ATTR")
    where = check.add_mutually_exclusive_group()
    where.add_argument("--registry", metavar="URL", help=f"schema registry (or {_REGISTRY_VAR})")
    where.add_argument("--dir", metavar="DIR", help="a committed folder of <subject>.avsc files")
    check.add_argument(
        "--level",
        type=str.upper,
        default="BACKWARD",
        help="BACKWARD (the default), FORWARD or FULL, each also _TRANSITIVE, or NONE",
    )
    register = sub.add_parser("register", help="register every model's schema under its subject")
    register.add_argument("app", metavar="MODULE:ATTR")
    register.add_argument("--registry", metavar="URL", help=f"schema registry (or {_REGISTRY_VAR})")
    export = sub.add_parser("export", help="print the schemas, or write them to --dir")
    export.add_argument("app", metavar="MODULE:ATTR")
    export.add_argument(
        "--dir", metavar="DIR", help="write <subject>.avsc files here (default: print)"
    )
    for parser in sub.choices.values():
        log_level_option(parser)
    schema.set_defaults(func=cmd_schema)
