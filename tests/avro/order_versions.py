"""Three versions of one record, for the Avro tests: v2 adds a field with a default (compatible
both ways with v1), "broken" changes a field's type (compatible with nothing)."""

from __future__ import annotations

from pydantic import BaseModel


class OrderV1(BaseModel):
    id: str
    amount: float


class OrderV2(BaseModel):
    id: str
    amount: float
    currency: str = "EUR"


class OrderBroken(BaseModel):
    id: str
    amount: str  # the type changed: no resolution
