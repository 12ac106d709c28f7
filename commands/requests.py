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
BATCH_TYPE = "Batch"
MAX_BATCH_COMMANDS = 1000
MAX_BATCH_PAYLOAD_BYTES = 512 * 1024
MAX_SESSION_BYTES = 256
_ID = re.compile(rb"[A-Za-z0-9_.:-]{1,128}")

MODELS: dict[str, type[pydantic.BaseModel]] = {
    model.__name__: model
    for model in (OpenAccount, Deposit, Withdraw, Transfer, CloseAccount, UpdateProfile, ChangePassword,
                  EraseCustomer)
}
# What a batch may carry: commands whose only side effects are in the append script, or need no proof.
BATCH_MODELS = frozenset({"OpenAccount", "Deposit", "Withdraw", "Transfer", "CloseAccount", "UpdateProfile"})
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
    batch_index: int | None = None  # position in a ``Batch`` entry; ``None`` for a request of its own
    error: str | None = None  # a batch member that is not a valid command: refused, the rest of the batch goes on

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


def _header(fields: dict[bytes, bytes]) -> tuple[str, str, str, str | None]:
    """request_id, command_id, type and session of an entry; raises :class:`MalformedRequest`."""
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
    if request_type not in MODELS and request_type not in AUTH_REQUEST_TYPES and request_type != BATCH_TYPE:
        raise MalformedRequest(f"unknown request type {request_type[:64]!r}", request_id)

    session = None
    raw_session = fields.get(b"session")
    if raw_session is not None:
        if len(raw_session) > MAX_SESSION_BYTES or not raw_session.isascii():
            raise MalformedRequest("session token must be ASCII of at most 256 bytes", request_id)
        session = raw_session.decode()
    return request_id, command_id, request_type, session


def _json_object(raw: bytes | None, limit: int, request_id: str) -> dict[str, Any]:
    if raw is None:
        raise MalformedRequest("missing field payload", request_id)
    if len(raw) > limit:
        raise MalformedRequest(f"payload of {len(raw)} bytes exceeds {limit}", request_id)
    try:
        payload = orjson.loads(raw)  # orjson rejects invalid UTF-8 as well as invalid JSON
    except orjson.JSONDecodeError as error:
        raise MalformedRequest(f"payload is not valid UTF-8 JSON: {error}", request_id) from error
    if not isinstance(payload, dict):
        raise MalformedRequest("payload must be a JSON object", request_id)
    return payload


def _command(request_type: str, payload: dict[str, Any], transport_key: PrivateKey | None) -> Command:
    """Validate one command payload; raises ``ValueError`` with a readable reason."""
    try:
        payload = unseal_payload(transport_key, payload)
    except TransportError as error:
        raise ValueError(str(error)) from error
    declared = payload.setdefault("type", request_type)
    if declared != request_type:
        raise ValueError("payload type differs from the request type")
    try:
        return MODELS[request_type].model_validate(payload)  # type: ignore[return-value]
    except pydantic.ValidationError as error:
        raise ValueError(f"invalid {request_type}: {_error_summary(error)}") from error


def parse_entry(
    entry_id: str,
    fields: dict[bytes, bytes],
    *,
    transport_key: PrivateKey | None = None,
) -> ParsedRequest:
    """Validate one stream entry holding one request; raises :class:`MalformedRequest`."""
    request_id, command_id, request_type, session = _header(fields)
    if request_type == BATCH_TYPE:
        raise MalformedRequest("a Batch entry holds several requests: use parse_entries", request_id)
    payload = _json_object(fields.get(b"payload"), MAX_PAYLOAD_BYTES, request_id)
    if request_type not in MODELS:
        try:
            payload = unseal_payload(transport_key, payload)
        except TransportError as error:
            raise MalformedRequest(str(error), request_id) from error
        return ParsedRequest(entry_id, request_id, command_id, request_type, session, None, payload, fields)
    try:
        command = _command(request_type, payload, transport_key)
    except ValueError as error:
        raise MalformedRequest(str(error), request_id) from error
    return ParsedRequest(entry_id, request_id, command_id, request_type, session, command, None, fields)


def parse_entries(
    entry_id: str,
    fields: dict[bytes, bytes],
    *,
    transport_key: PrivateKey | None = None,
) -> list[ParsedRequest]:
    """The requests of one entry: one, or every command of a ``Batch`` (each with its own command id).

    A batch is one signed request carrying up to :data:`MAX_BATCH_COMMANDS` commands: one stream entry, one
    MAC and one reply for all of them, which is what makes bulk work (payroll files, the bench) cheap. Each
    command is still decided, appended and deduplicated on its own; an invalid one is refused alone.
    """
    request_id, batch_id, request_type, session = _header(fields)
    if request_type != BATCH_TYPE:
        return [parse_entry(entry_id, fields, transport_key=transport_key)]
    payload = _json_object(fields.get(b"payload"), MAX_BATCH_PAYLOAD_BYTES, request_id)
    items = payload.get("commands")
    if not isinstance(items, list) or not items:
        raise MalformedRequest("a Batch payload must hold a non-empty list 'commands'", request_id)
    if len(items) > MAX_BATCH_COMMANDS:
        raise MalformedRequest(f"a Batch holds at most {MAX_BATCH_COMMANDS} commands, not {len(items)}", request_id)
    out = []
    for index, item in enumerate(items):
        out.append(_batch_member(entry_id, fields, request_id, session, index, item, transport_key))
    return out


def _batch_member(
    entry_id: str, fields: dict[bytes, bytes], request_id: str, session: str | None, index: int, item: object,
    transport_key: PrivateKey | None,
) -> ParsedRequest:
    if not isinstance(item, dict):
        return ParsedRequest(entry_id, request_id, f"#{index}", "", session, None, None, fields, index,
                             f"command {index} must be an object with command_id and command")
    raw_id = item.get("command_id")
    if not isinstance(raw_id, str) or not _ID.fullmatch(raw_id.encode()):
        return ParsedRequest(entry_id, request_id, f"#{index}", "", session, None, None, fields, index,
                             f"command {index}: command_id must be 1-128 characters of [A-Za-z0-9_.:-]")
    body = item.get("command")
    request_type = body.get("type") if isinstance(body, dict) else None
    if not isinstance(request_type, str) or request_type not in BATCH_MODELS:
        return ParsedRequest(entry_id, request_id, raw_id, "", session, None, None, fields, index,
                             f"command {index}: type must be one of {', '.join(sorted(BATCH_MODELS))}")
    try:
        command = _command(request_type, dict(body), transport_key)  # type: ignore[arg-type]
    except ValueError as error:
        return ParsedRequest(entry_id, request_id, raw_id, request_type, session, None, None, fields, index,
                             str(error))
    return ParsedRequest(entry_id, request_id, raw_id, request_type, session, command, None, fields, index)


def redacted_fields(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The entry as it may be kept in the dead-letter stream: personal fields of the payload masked.

    A payload that is not a JSON object cannot be inspected; only its size is kept, never its bytes.
    """
    out = {name: value for name, value in fields.items() if name not in (b"payload", b"session")}
    raw = fields.get(b"payload")
    if raw is None:
        return out
    try:
        payload = orjson.loads(raw) if len(raw) <= MAX_BATCH_PAYLOAD_BYTES else None
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict):
        out[b"payload"] = orjson.dumps(_masked(payload))
    else:
        out[b"payload"] = f"[{len(raw)} bytes not kept]".encode()
    return out


def _masked(value: object) -> object:
    """``value`` with every personal field, at any depth (a batch's commands), replaced by a marker."""
    if isinstance(value, dict):
        return {k: ("[redacted]" if k in PERSONAL_PAYLOAD_FIELDS else _masked(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value
