"""A client for the Confluent Schema Registry REST API, which Apicurio (``/apis/ccompat/v7``)
and Karapace serve too.

Schemas are immutable once registered, so what is looked up is cached for the life of the
client: a schema by id (consuming), the id of a schema under a subject (publishing). Only the
first record of each kind costs a request.

Errors say what failed and where, never with the URL's password: an unreachable registry (or
one answering 5xx) is `BrokerUnavailableError` -- consuming waits for it, spending no attempt,
publishing fails with it; anything the registry refuses is `SchemaRegistryError`, with the
registry's own message.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import anyio
import httpx

from eventbus.errors import BrokerUnavailableError, ConfigurationError, EventBusError
from eventbus.transports.urls import censor_url

__all__ = ["SchemaRegistry", "SchemaRegistryError"]

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_CACHED = 4096
"""Entries a cache keeps; past it, lookups still work, uncached."""

# Error codes of the Confluent API, in the body of a 404 or 409.
SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403


class SchemaRegistryError(EventBusError):
    """The registry refused a request: a schema that is not registered, an incompatible one, a
    subject that does not exist. ``status`` and ``code`` are the registry's."""

    def __init__(self, message: str, status: int = 0, code: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class SchemaRegistry:
    """``SchemaRegistry("http://registry:8081")`` (Confluent) or
    ``SchemaRegistry("http://registry:8080/apis/ccompat/v7")`` (Apicurio). Credentials may
    be given in the URL (``https://user:password@host``) or as ``username``/``password``; they
    are sent as HTTP basic authentication and never printed."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:  # the message would quote the URL, password included
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise ConfigurationError(  # not echoed: a badly quoted password breaks parsing
                "schema registry URL must be http(s)://[user:password@]host[:port][/path] "
                "(percent-encode '/', '@' and ':' in a password); the one given does not parse"
            )
        if parts.username is not None and username is None:
            username, password = unquote(parts.username), unquote(parts.password or "")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        host += f":{port}" if port else ""
        self.url = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
        """The registry's address, without credentials: safe to print."""
        auth = httpx.BasicAuth(username, password or "") if username is not None else None
        self._owned = client is None
        self._client = client or httpx.AsyncClient(auth=auth, timeout=timeout)
        self._by_id: dict[int, str] = {}
        self._ids: dict[tuple[str, str], int] = {}
        """Bounded (`_CACHED`): an app publishing to ever new subjects would grow it."""

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    async def __aenter__(self) -> SchemaRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- lookups ----------------------------------------------------------------------------

    async def schema(self, schema_id: int) -> str:
        """The schema (its JSON text) registered under ``schema_id``."""
        found = self._by_id.get(schema_id)
        if found is None:
            body = await self._request("GET", f"/schemas/ids/{schema_id}")
            found = _text(body, "schema", self.url)
            if len(self._by_id) < _CACHED:
                self._by_id[schema_id] = found
        return found

    async def id_of(self, subject: str, schema: str, *, register: bool = False) -> int:
        """The id of ``schema`` under ``subject``; with ``register``, registered first if the
        subject does not have it yet."""
        key = (subject, schema)
        found = self._ids.get(key)
        if found is not None:
            return found
        payload = {"schema": schema, "schemaType": "AVRO"}
        path = f"/subjects/{_quoted(subject)}"
        if register:
            found = await self._register(f"{path}/versions", payload)
        else:
            try:
                found = _number(await self._request("POST", path, payload), "id", self.url)
            except SchemaRegistryError as exc:
                if exc.code not in (SUBJECT_NOT_FOUND, SCHEMA_NOT_FOUND):
                    raise
                # Registered by another tool, written another way (spaces, key order): the
                # registry may compare text. The same JSON writes the same record bytes.
                same = await self._same_schema(subject, schema)
                if same is None:
                    raise SchemaRegistryError(
                        f"the schema is not registered under subject {subject!r} at {self.url} "
                        "(register it, e.g. `eventbus schema register`, or turn auto_register "
                        "on)",
                        exc.status,
                        exc.code,
                    ) from None
                found = same
        if len(self._ids) < _CACHED:
            self._ids[key] = found
            self._by_id.setdefault(found, schema)
        return found

    async def _register(self, path: str, payload: Mapping[str, Any]) -> int:
        """Register a version (a POST to ``path``, the subject's versions). A 409 is tried
        again, twice, a moment later: Apicurio answers 409 ("artifact already exists") to the
        second of two clients registering the first versions of a subject at the same moment
        (two services starting together), and the same request passes once the subject
        exists. A schema the subject's compatibility refuses gets its 409 each time, and that
        one is raised."""
        for wait in (0.1, 0.5):
            try:
                return _number(await self._request("POST", path, payload), "id", self.url)
            except SchemaRegistryError as exc:
                if exc.status != 409:
                    raise
            await anyio.sleep(wait)
        return _number(await self._request("POST", path, payload), "id", self.url)

    async def _same_schema(self, subject: str, schema: str) -> int | None:
        """The id of the newest version of ``subject`` whose schema is ``schema`` written
        another way (`_normal`), or None."""
        wanted = _normal(schema)
        for version in reversed(await self.versions(subject)):
            schema_id, text = await self.version(subject, version)
            if _normal(text) == wanted:
                return schema_id
        return None

    async def versions(self, subject: str) -> list[int]:
        """The version numbers of ``subject``, oldest first; empty when there is no subject."""
        try:
            versions = await self._request("GET", f"/subjects/{_quoted(subject)}/versions")
        except SchemaRegistryError as exc:
            if exc.code == SUBJECT_NOT_FOUND:
                return []
            raise
        if not isinstance(versions, list):
            raise SchemaRegistryError(
                f"schema registry at {self.url}: unexpected answer {versions!r:.200}"
            )
        return sorted(int(version) for version in versions)

    async def version(self, subject: str, version: int | Literal["latest"]) -> tuple[int, str]:
        """Version ``version`` of ``subject``: its schema id and JSON text."""
        body = await self._request("GET", f"/subjects/{_quoted(subject)}/versions/{version}")
        return _number(body, "id", self.url), _text(body, "schema", self.url)

    async def latest(self, subject: str) -> tuple[int, str] | None:
        """The latest schema under ``subject`` (its id and JSON text), None if there is none."""
        try:
            return await self.version(subject, "latest")
        except SchemaRegistryError as exc:
            if exc.code in (SUBJECT_NOT_FOUND, VERSION_NOT_FOUND):
                return None
            raise

    async def subjects(self) -> list[str]:
        return [str(subject) for subject in await self._request("GET", "/subjects")]

    async def set_compatibility(self, level: str, subject: str | None = None) -> None:
        """Set the compatibility level (``BACKWARD``, ``FULL_TRANSITIVE``, ``NONE``, ...) of
        ``subject``, or the registry's default."""
        path = f"/config/{_quoted(subject)}" if subject else "/config"
        await self._request("PUT", path, {"compatibility": level})

    # -- the wire -----------------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> Any:
        url = self.url + path
        try:
            response = await self._client.request(
                method,
                url,
                content=json.dumps(payload) if payload is not None else None,
                headers={"Content-Type": _CONTENT_TYPE, "Accept": _CONTENT_TYPE},
            )
        except httpx.HTTPError as exc:
            raise BrokerUnavailableError(
                f"schema registry at {self.url} unreachable: {type(exc).__name__}: {exc}"
            ) from None  # the driver's message may hold the URL as given, credentials included
        status = response.status_code
        if status >= 500 or status in (408, 429):
            raise BrokerUnavailableError(
                f"schema registry at {self.url} answered {status} to {method} {path}: "
                f"{_message_of(response)}"
            )
        if status in (401, 403):
            raise SchemaRegistryError(
                f"schema registry at {self.url} refused the credentials ({status})", status
            )
        if status >= 300:  # a redirect is not followed: the URL should name the API itself
            code = 0
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                code = int(response.json().get("error_code", 0))
            where = response.headers.get("location")
            detail = f"redirected to {censor_url(where)}" if where else _message_of(response)
            raise SchemaRegistryError(
                f"schema registry at {self.url}: {method} {path}: {status} {detail}", status, code
            )
        try:
            return response.json()
        except ValueError:
            raise SchemaRegistryError(
                f"schema registry at {self.url}: {method} {path} answered {status} with no "
                f"JSON (is it the registry's API?): {response.text[:120]!r}",
                status,
            ) from None


def _quoted(subject: str) -> str:
    return quote(subject, safe="")


def _message_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body)[:300]
    return str(body)[:300]


def _normal(schema: str) -> Any:
    """A schema's JSON without what does not change the records it writes (docs, key order,
    spacing), for finding it among versions registered by another tool. Logical types,
    defaults and names stay: two schemas that write records differently never match."""
    try:
        return _without_docs(json.loads(schema))
    except ValueError:  # not JSON: compared as it is
        return schema


def _without_docs(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_docs(v) for k, v in sorted(value.items()) if k != "doc"}
    if isinstance(value, list):
        return [_without_docs(item) for item in value]
    return value


def _text(body: Any, key: str, where: str) -> str:
    """``body[key]`` of a registry answer, as text; a clear error if the answer has no such."""
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str):
        raise SchemaRegistryError(f"schema registry at {where}: unexpected answer {body!r:.200}")
    return value


def _number(body: Any, key: str, where: str) -> int:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, int):
        raise SchemaRegistryError(f"schema registry at {where}: unexpected answer {body!r:.200}")
    return value
