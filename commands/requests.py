"""Turning raw ``{bank}:commands`` stream entries into validated requests (DESIGN §6, §7).

Everything a client wrote is untrusted: every field is checked for presence, type, size and encoding before
the handler looks at it. An entry that fails raises :class:`MalformedRequest` with a reason for the dead-letter
stream and, when it can be read, the request id to send the error reply to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pydantic
from nacl.public import PrivateKey

from auth_zkp.login import AUTH_REQUEST_TYPES
from commands.models import (
    ChangePassword,
    CloseAccount,
    Command,
    Deposit,
    EraseCustomer,
    OpenAccount,
    Transfer,
    UpdateProfile,
    Withdraw,
)
from eventstore.transport import TransportError, unseal_payload

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_SESSION_BYTES = 256
_ID = re.compile(rb"[A-Za-z0-9_.:-]{1,128}")

MODELS: dict[str, type[pydantic.BaseModel]] = {
    model.__name__: model
    for model in (OpenAccount, Deposit, Withdraw, Transfer, CloseAccount, UpdateProfile, ChangePassword,
                  EraseCustomer)
}
PERSONAL_PAYLOAD_FIELDS = frozenset({"ssn", "phone", "first_name", "last_name", "credential", "proof", "password",
                                     "response", "secret"})


class MalformedRequest(ValueError):
    """The entry cannot be a request; ``request_id`` is set when an error reply can still be sent."""

    def __init__(self, reason: str, request_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


@dataclass(slots=True)
class ParsedRequest:
    """One well-formed request. ``command`` is set for bank commands, ``payload`` for login requests."""

    entry_id: str
    request_id: str
    command_id: str
    type: str
    session: str | None
    command: Command | None
    payload: dict[str, Any] | None
    fields: Mapping[bytes, bytes]  # as received: the session MAC covers these bytes

    @property
    def account(self) -> int | None:
        """The account a command acts on (``None`` for ``OpenAccount`` and login requests)."""
        return getattr(self.command, "account", None)


def _identifier(fields: dict[bytes, bytes], name: bytes, request_id: str | None) -> str:
    raw = fields.get(name)
    if raw is None:
        raise MalformedRequest(f"missing field {name.decode()}", request_id)
    if not _ID.fullmatch(raw):
        raise MalformedRequest(f"field {name.decode()} must be 1-128 characters of [A-Za-z0-9_.:-]", request_id)
    return raw.decode()


def _error_summary(error: pydantic.ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "payload"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_entry(
    entry_id: str,
    fields: dict[bytes, bytes],
    *,
    transport_key: PrivateKey | None = None,
) -> ParsedRequest:
    """Validate one stream entry; raises :class:`MalformedRequest`."""
    request_id = None
    raw_request_id = fields.get(b"request_id")
    if raw_request_id is not None and _ID.fullmatch(raw_request_id):
        request_id = raw_request_id.decode()
    request_id = _identifier(fields, b"request_id", request_id)
    command_id = _identifier(fields, b"command_id", request_id)

    raw_type = fields.get(b"type")
    if raw_type is None:
        raise MalformedRequest("missing field type", request_id)
    request_type = raw_type.decode("ascii", errors="replace")
    if request_type not in MODELS and request_type not in AUTH_REQUEST_TYPES:
        raise MalformedRequest(f"unknown request type {request_type[:64]!r}", request_id)

    session = None
    raw_session = fields.get(b"session")
    if raw_session is not None:
        if len(raw_session) > MAX_SESSION_BYTES or not raw_session.isascii():
            raise MalformedRequest("session token must be ASCII of at most 256 bytes", request_id)
        session = raw_session.decode()

    raw_payload = fields.get(b"payload")
    if raw_payload is None:
        raise MalformedRequest("missing field payload", request_id)
    if len(raw_payload) > MAX_PAYLOAD_BYTES:
        raise MalformedRequest(f"payload of {len(raw_payload)} bytes exceeds {MAX_PAYLOAD_BYTES}", request_id)
    try:
        payload = orjson.loads(raw_payload)  # orjson rejects invalid UTF-8 as well as invalid JSON
    except orjson.JSONDecodeError as error:
        raise MalformedRequest(f"payload is not valid UTF-8 JSON: {error}", request_id) from error
    if not isinstance(payload, dict):
        raise MalformedRequest("payload must be a JSON object", request_id)
    try:
        payload = unseal_payload(transport_key, payload)
    except TransportError as error:
        raise MalformedRequest(str(error), request_id) from error

    model = MODELS.get(request_type)
    if model is None:
        return ParsedRequest(entry_id, request_id, command_id, request_type, session, None, payload, fields)
    declared = payload.setdefault("type", request_type)
    if declared != request_type:
        raise MalformedRequest("payload type differs from the request type", request_id)
    try:
        command = model.model_validate(payload)
    except pydantic.ValidationError as error:
        raise MalformedRequest(f"invalid {request_type}: {_error_summary(error)}", request_id) from error
    return ParsedRequest(entry_id, request_id, command_id, request_type, session, command, None, fields)  # type: ignore[arg-type]


def redacted_fields(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The entry as it may be kept in the dead-letter stream: personal fields of the payload masked.

    A payload that is not a JSON object cannot be inspected; only its size is kept, never its bytes.
    """
    out = {name: value for name, value in fields.items() if name not in (b"payload", b"session")}
    raw = fields.get(b"payload")
    if raw is None:
        return out
    try:
        payload = orjson.loads(raw) if len(raw) <= MAX_PAYLOAD_BYTES else None
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict):
        masked = {k: ("[redacted]" if k in PERSONAL_PAYLOAD_FIELDS else v) for k, v in payload.items()}
        out[b"payload"] = orjson.dumps(masked)
    else:
        out[b"payload"] = f"[{len(raw)} bytes not kept]".encode()
    return out
