"""Who is asking: the principal a valid session resolves to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["customer", "admin"]
ADMIN_ACCOUNT_ID = 0


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: int
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def name(self) -> str:
        """How the principal appears as ``actor`` in events."""
        return f"{self.role}:{self.account_id}"
