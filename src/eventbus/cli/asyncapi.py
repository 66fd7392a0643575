"""``eventbus asyncapi``: write the AsyncAPI 3.0 document of an app (`eventbus.asyncapi`).

eventbus asyncapi app:bus                       # YAML on stdout
eventbus asyncapi app:bus -o asyncapi.json      # the format follows the file's extension
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from eventbus.asyncapi import document
from eventbus.cli.common import EXIT_USAGE, CliError, load_bus, log_level_option

__all__ = ["add_parser"]


def cmd_asyncapi(args: argparse.Namespace) -> int:
    bus = load_bus(args.app)
    doc = document(bus, title=args.title or args.app, version=args.doc_version)
    form = args.format or ("json" if (args.output or "").endswith(".json") else "yaml")
    if form == "json":
        text = json.dumps(doc, indent=2) + "\n"
    else:
        try:
            import yaml  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            raise CliError(
                "YAML output needs PyYAML: pip install 'eventbus[asyncapi]', or use --format json",
                EXIT_USAGE,
            ) from None
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def add_parser(commands: Any) -> None:
    command = commands.add_parser("asyncapi", help="write the app's AsyncAPI 3.0 document")
    command.add_argument("app", metavar="MODULE:ATTR")
    command.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    command.add_argument(
        "--format", choices=("yaml", "json"), help="default: json for a .json file, else yaml"
    )
    command.add_argument("--title", help="info.title (default: MODULE:ATTR)")
    command.add_argument(
        "--doc-version", default="1.0.0", help="info.version of the document (default 1.0.0)"
    )
    log_level_option(command)
    command.set_defaults(func=cmd_asyncapi)
