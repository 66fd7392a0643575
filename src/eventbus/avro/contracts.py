"""An app's schema contracts: the Avro schema of every model it consumes or declares it
publishes, under the subject its codec uses; checked for compatibility against a registry or a
committed folder of ``.avsc`` files, registered, exported (``eventbus schema``).

What an app declares: each handler's payload model (what it consumes), and the return model of
a handler with ``publish_to=``/``send_to=`` (what it publishes). The subject and the schema
come from the subscription's codec, else the bus's, when it is an `AvroCodec`; otherwise from
the defaults (topic strategy, `model_schema`).

Compatibility is Avro's schema resolution (Apache Avro's own checker), with the model as the
new schema and the registered one as the old: ``BACKWARD`` -- the new reads what the old
wrote; ``FORWARD`` -- the old reads what the new writes; ``FULL`` both; ``*_TRANSITIVE``
against every registered version, not only the latest; ``NONE`` passes. The record's name is
taken from the registered schema first: the subject says which record it is (as when
decoding, `codec.AvroCodec`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import avro.compatibility
import avro.errors
import avro.schema
import pydantic

from eventbus.avro.codec import AvroCodec, canonical
from eventbus.avro.registry import SchemaRegistry
from eventbus.avro.schema import AvroSchemaError, Schema, load_avsc, model_schema

if TYPE_CHECKING:
    from eventbus.bus import EventBus

__all__ = ["LEVELS", "Contract", "Verdict", "check", "contracts_of", "export"]

LEVELS = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)

Role = Literal["consumes", "publishes"]


@dataclass(frozen=True)
class Contract:
    subject: str
    model: type[pydantic.BaseModel]
    schema: Schema
    uses: tuple[str, ...]
    """Who declares it: ``consumes topic orders (handler ship)``, ``publishes ...``."""

    @property
    def text(self) -> str:
        return canonical(self.schema)


@dataclass(frozen=True)
class Verdict:
    contract: Contract
    problems: tuple[str, ...]
    """Why it breaks the level, each naming the fields; empty when it passes."""
    against: str
    """What it was compared with: ``registry version 3``, ``schemas/orders-value.avsc``,
    ``nothing (new subject)``."""

    @property
    def ok(self) -> bool:
        return not self.problems


def contracts_of(bus: EventBus) -> list[Contract]:
    """Every (subject, model) the app declares, once each, in registration order."""
    found: dict[tuple[str, type[pydantic.BaseModel]], tuple[Schema, list[str]]] = {}
    for subscriber in bus.subscribers:
        codec = subscriber.options.codec or bus.codec
        spec = subscriber.handler
        entries: list[tuple[str, Any, str]] = [
            (subscriber.name, spec.payload_type, f"consumes {subscriber.kind} {subscriber.name}")
        ]
        returns = subscriber.options.returns
        if returns is not None:
            where = f"publishes to {returns.kind} {returns.name}"
            entries.append((returns.name, spec.return_type, where))
        for index, (destination, model, use) in enumerate(entries):
            if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
                continue  # bytes, str, dicts: no schema to keep
            # A return value is published with the bus's codec, like every publish.
            writer = codec if index == 0 else bus.codec
            schema, subject = _schema_and_subject(writer, model, destination)
            entry = found.setdefault((subject, model), (schema, []))
            entry[1].append(f"{use} (handler {spec.name})")
    return [
        Contract(subject, model, schema, tuple(uses))
        for (subject, model), (schema, uses) in found.items()
    ]


def _schema_and_subject(
    codec: object, model: type[pydantic.BaseModel], destination: str
) -> tuple[Schema, str]:
    if isinstance(codec, AvroCodec):
        schema = codec.schema_of(model)
        return schema, codec.subject_of(destination, schema)
    return model_schema(model), f"{destination}-value"


async def check(
    contracts: Iterable[Contract],
    level: str,
    *,
    registry: SchemaRegistry | None = None,
    folder: Path | None = None,
) -> list[Verdict]:
    """Each contract against the registry's versions of its subject, or ``folder``'s
    ``<subject>.avsc``, under ``level``."""
    if level not in LEVELS:
        raise ValueError(f"unknown compatibility level {level!r}; one of {', '.join(LEVELS)}")
    verdicts = []
    for contract in contracts:
        olds: list[tuple[str, Schema]] = []
        if registry is not None:
            versions = await _registered(registry, contract.subject, level.endswith("TRANSITIVE"))
            olds = [(f"registry version {v}", json.loads(text)) for v, text in versions]
        elif folder is not None:
            path = folder / f"{contract.subject}.avsc"
            if path.exists():
                olds = [(str(path), load_avsc(path))]
        if not olds:
            verdicts.append(Verdict(contract, (), "nothing (new subject)"))
            continue
        problems: list[str] = []
        for where, old in olds:
            problems += [f"against {where}: {p}" for p in breaks(contract.schema, old, level)]
        verdicts.append(Verdict(contract, tuple(problems), olds[0][0]))
    return verdicts


async def _registered(registry: SchemaRegistry, subject: str, every: bool) -> list[tuple[int, str]]:
    """The subject's versions (number, schema text), newest first; only the latest unless
    ``every``."""
    versions = await registry.versions(subject)
    if not every:
        versions = versions[-1:]
    return [(v, (await registry.version(subject, v))[1]) for v in reversed(versions)]


def breaks(new: Schema, old: Schema, level: str) -> list[str]:
    """Why ``new`` is not ``level``-compatible with ``old``, each naming the fields."""
    if level == "NONE":
        return []
    new = {**new, "name": old.get("name", new.get("name")), "namespace": old.get("namespace")}
    problems = []
    if level.startswith(("BACKWARD", "FULL")):
        problems += [f"BACKWARD: {p}" for p in _cannot_read(new, old)]
    if level.startswith(("FORWARD", "FULL")):
        problems += [f"FORWARD: {p}" for p in _cannot_read(old, new)]
    return problems


def _cannot_read(reader: Schema, writer: Schema) -> list[str]:
    """Why a reader of ``reader`` cannot read what ``writer`` wrote (Apache Avro's checker)."""
    checker = avro.compatibility.ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    try:
        parsed = avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    except avro.errors.AvroException as exc:  # a committed .avsc or a registered schema
        raise AvroSchemaError(f"not an Avro schema: {exc}") from None
    result = checker.get_compatibility(*parsed)
    if result.compatibility is avro.compatibility.SchemaCompatibilityType.compatible:
        return []
    # The checker keeps messages and locations in two sets, unpaired. A missing default's
    # message is the field's own name; the other locations go with the other messages.
    fields = {_field_at(reader, location) for location in result.locations}
    problems = []
    others = []
    for message in sorted(result.messages):
        named = [field for field in fields if field.rsplit(".", 1)[-1] == message]
        if named:
            fields.discard(named[0])
            problems.append(
                f"field {named[0]} has no default, so records written without it cannot be read"
            )
        else:
            others.append(message)
    where = f" (field {', '.join(sorted(fields))})" if fields else ""
    return problems + [f"{message}{where}" for message in others]


def _field_at(schema: Any, location: str) -> str:
    """The dotted field path a checker location (``/fields/1/type``) points at."""
    names: list[str] = []
    node = schema
    parts = [part for part in location.split("/") if part]
    for index, part in enumerate(parts):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            if index > 0 and parts[index - 1] == "fields" and isinstance(node, dict):
                names.append(str(node.get("name")))
        else:
            break
    return ".".join(names) or location


def export(contracts: Iterable[Contract], folder: Path) -> list[Path]:
    """Write each contract's schema to ``folder/<subject>.avsc`` (what `check` reads); two
    models under one subject: the last one listed wins."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for contract in contracts:
        path = folder / f"{contract.subject}.avsc"
        path.write_text(json.dumps(contract.schema, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written
