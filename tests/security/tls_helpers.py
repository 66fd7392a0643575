"""Shared by the security tests: the throwaway certificates ``scripts/brokers`` makes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    """scripts/brokers.d/certs.sh's files: ``certs["client.key"]`` is that file's path."""

    dir: Path

    def __getitem__(self, name: str) -> str:
        return str(self.dir / name)
