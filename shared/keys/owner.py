"""Whose jobs and training runs a caller sees."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Owner:
    """Whose things a caller sees: its API key's, or everyone's for admins (and with auth off)."""

    key_id: int | None
    admin: bool

    def sees(self, key_id: int | None) -> bool:
        """Whether something owned by ``key_id`` is visible to this caller."""
        return self.admin or key_id == self.key_id
