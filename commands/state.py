"""Write-side state of one account as the handlers see it (``{bank}:acct:<id>``, DESIGN §3).

Derived from the log and rebuildable from it; the append script checks ``version`` before every write.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

Status = Literal["missing", "open", "closed"]
Role = Literal["customer", "admin"]


class AccountState(NamedTuple):
    """One account's write-side state: a named tuple, immutable and cheap to build (the hot path makes one per
    account a command touches)."""

    account_id: int
    version: int = 0
    balance: int = 0
    status: Status = "missing"
    role: Role = "customer"
    erased: bool = False
    sms_opt_in: bool = False
    cred_salt: str = ""
    cred_kdf: str = ""
    cred_key: str = ""

    @property
    def exists(self) -> bool:
        return self.status != "missing"

    def bump(self, **changes: object) -> AccountState:
        """The next version with ``changes`` applied."""
        return self._replace(version=self.version + 1, **changes)

    def with_balance(self, balance: int) -> AccountState:
        """The next version with a new balance: the hot path of every money movement, so no ``replace``."""
        return AccountState(self.account_id, self.version + 1, balance, self.status, self.role, self.erased,
                            self.sms_opt_in, self.cred_salt, self.cred_kdf, self.cred_key)

    def to_fields(self) -> dict[str, str | int]:
        """Everything that goes back into the Redis hash."""
        return {
            "version": self.version,
            "balance": self.balance,
            "status": self.status,
            "role": self.role,
            "erased": int(self.erased),
            "sms": int(self.sms_opt_in),
            "cred_salt": self.cred_salt,
            "cred_kdf": self.cred_kdf,
            "cred_key": self.cred_key,
        }


def state_from_hash(account_id: int, raw: Mapping[bytes, bytes]) -> AccountState:
    if not raw:
        return AccountState(account_id=account_id)

    def text(name: bytes) -> str:
        return raw.get(name, b"").decode()

    return AccountState(
        account_id=account_id,
        version=int(raw[b"version"]),
        balance=int(raw[b"balance"]),
        status=text(b"status"),  # type: ignore[arg-type]
        role=text(b"role") or "customer",  # type: ignore[arg-type]
        erased=raw.get(b"erased") == b"1",
        sms_opt_in=raw.get(b"sms") == b"1",
        cred_salt=text(b"cred_salt"),
        cred_kdf=text(b"cred_kdf"),
        cred_key=text(b"cred_key"),
    )
