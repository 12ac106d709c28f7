"""Command models (pydantic): what a client may ask the bank to do (DESIGN §4, §7).

A request on ``{bank}:commands`` carries ``request_id``, ``command_id``, ``session``, ``type`` and ``payload``
(JSON). The payload is validated here, on the server, whatever the client checked before sending.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from commands.money import MAX_AMOUNT_CENTS

AccountId = Annotated[int, Field(ge=0, le=10**12)]
Cents = Annotated[int, Field(gt=0, le=MAX_AMOUNT_CENTS)]

_SSN = re.compile(r"[0-9]{3}-?[0-9]{2}-?[0-9]{4}")
_PHONE = re.compile(r"\+[1-9][0-9]{7,14}")


def _ssn(value: str) -> str:
    value = value.strip()
    if not _SSN.fullmatch(value):
        raise ValueError("SSN must be 9 digits, like 123-45-6789")
    digits = value.replace("-", "")
    if digits[:3] in ("000", "666") or digits[0] == "9" or digits[3:5] == "00" or digits[5:] == "0000":
        raise ValueError("SSN is not a valid number")
    return f"{digits[:3]}-{digits[3:5]}-{digits[5:]}"


def _phone(value: str) -> str:
    compact = re.sub(r"[\s().-]", "", value)
    if not _PHONE.fullmatch(compact):
        raise ValueError("phone must be in international format, like +15551234567")
    return compact


def _name(value: str) -> str:
    value = unicodedata.normalize("NFC", value).strip()
    if not value or len(value) > 80:
        raise ValueError("name must be 1 to 80 characters")
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        raise ValueError("name contains control characters")
    return value


Ssn = Annotated[str, AfterValidator(_ssn)]
Phone = Annotated[str, AfterValidator(_phone)]
PersonName = Annotated[str, AfterValidator(_name)]


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class KdfParams(_Command):
    """Argon2id parameters stored with a credential so the client can re-derive ``x``."""

    algorithm: Literal["argon2id"] = "argon2id"
    memory_kib: int = Field(ge=8 * 1024, le=1024 * 1024)
    iterations: int = Field(ge=1, le=16)
    lanes: int = Field(ge=1, le=16)


class Credential(_Command):
    """A Schnorr verifier: per-user salt, KDF parameters and public key ``X = g^x`` (hex, 32 bytes)."""

    salt: str = Field(pattern=r"^[0-9a-f]{32,64}$")
    kdf: KdfParams
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$")


class OpenAccount(_Command):
    type: Literal["OpenAccount"]
    ssn: Ssn
    phone: Phone
    first_name: PersonName
    last_name: PersonName
    sms_opt_in: bool = False
    credential: Credential


class Deposit(_Command):
    type: Literal["Deposit"]
    account: AccountId
    amount: Cents


class Withdraw(_Command):
    type: Literal["Withdraw"]
    account: AccountId
    amount: Cents


class Transfer(_Command):
    type: Literal["Transfer"]
    account: AccountId
    to: AccountId
    amount: Cents


class CloseAccount(_Command):
    type: Literal["CloseAccount"]
    account: AccountId


class UpdateProfile(_Command):
    type: Literal["UpdateProfile"]
    account: AccountId
    phone: Phone | None = None
    sms_opt_in: bool | None = None
    first_name: PersonName | None = None
    last_name: PersonName | None = None


class ChangePassword(_Command):
    """Replace the verifier; the handler accepts it only with a valid proof made with the old password."""

    type: Literal["ChangePassword"]
    account: AccountId
    credential: Credential
    proof: dict[str, str]


class EraseCustomer(_Command):
    type: Literal["EraseCustomer"]
    account: AccountId


Command = Annotated[
    OpenAccount | Deposit | Withdraw | Transfer | CloseAccount | UpdateProfile | ChangePassword | EraseCustomer,
    Field(discriminator="type"),
]
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


def parse_command(payload: bytes | str) -> Command:
    """Validate a JSON payload into a command; raises ``pydantic.ValidationError``."""
    return COMMAND_ADAPTER.validate_json(payload)
