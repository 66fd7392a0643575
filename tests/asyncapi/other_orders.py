"""Another model named ``Order``, as a second service's package would have one."""

from __future__ import annotations

from pydantic import BaseModel


class Order(BaseModel):
    sku: str
