"""The batch append: one Lua script call per batch of decided commands (DESIGN §5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from importlib import resources
from types import MappingProxyType
from typing import NamedTuple

import redis

from eventstore.direct import DirectConnection
from eventstore.keys import Keys

_SCRIPT_SOURCE = resources.files("eventstore").joinpath("append.lua").read_text(encoding="utf-8")

DEFAULT_OUTCOME_TTL_S = 30 * 24 * 3600
MAX_COMMANDS_PER_APPEND = 512


class AppendStatus(StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    DUPLICATE = "dup"
    CONFLICT = "conflict"


NO_FIELDS: Mapping[str, str | int] = MappingProxyType({})

# The write path builds several of these per command: they are named tuples, as immutable as a frozen dataclass
# and about half as costly to build (a frozen dataclass sets each field through ``object.__setattr__``).
# Measured with the deciders' types too: deciding and preparing a transfer took 16.1-16.7 us with frozen
# dataclasses, 13.5-14.5 us with named tuples.


class AccountWrite(NamedTuple):
    """The version a decider saw for one account, and the fields to store if the command succeeds."""

    key: str
    expected_version: int
    fields: Mapping[str, str | int] = NO_FIELDS


class PreparedEvent(NamedTuple):
    """An encoded event whose body is ``prefix + str(seq) + suffix``."""

    type: str
    prefix: bytes
    suffix: bytes


class PreparedCommand(NamedTuple):
    """Everything the script needs to settle one command.

    The outcome (stored under ``outcome_key`` and sent back as the reply) is
    ``reply_prefix + str(last_seq) + reply_suffix`` with ``reply_suffix`` set; otherwise ``reply_prefix`` as it is
    (rejections).
    """

    outcome_key: str
    accounts: Sequence[AccountWrite]
    events: Sequence[PreparedEvent]
    reply_prefix: bytes
    reply_suffix: bytes | None = None

    def reply_for(self, result: AppendResult) -> bytes:
        """The reply for ``result``: the outcome the script stored (``ok``, ``rejected``) or had stored (``dup``)."""
        if result.stored is not None:
            return result.stored
        if self.reply_suffix is None:
            return self.reply_prefix
        return self.reply_prefix + str(result.last_seq).encode() + self.reply_suffix


class AppendResult(NamedTuple):
    status: AppendStatus
    last_seq: int
    stored: bytes | None = None  # for DUPLICATE: the outcome of the first delivery


class AppendError(RuntimeError):
    """The script refused its arguments: a programming error, never a business outcome."""


class Appender:
    """Runs the append script; registered once per connection (EVALSHA with EVAL fallback)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: Keys,
        outcome_ttl_s: int = DEFAULT_OUTCOME_TTL_S,
    ) -> None:
        self.client = client
        self._script = client.register_script(_SCRIPT_SOURCE)
        self._direct = DirectConnection(client)  # for send()
        self._keys = keys
        self._outcome_ttl_s = outcome_ttl_s

    def append(self, commands: Sequence[PreparedCommand]) -> list[AppendResult]:
        if not commands:
            return []
        assert len(commands) <= MAX_COMMANDS_PER_APPEND, "batch larger than the append limit"
        return self.run_encoded(*self.encode(commands))

    def send(self, commands: Sequence[PreparedCommand]) -> PendingAppend:
        """Start an append without waiting for it: the caller prepares the next chunk while Redis runs this one.

        :meth:`PendingAppend.results` must be called before the next ``send`` on the same appender.
        """
        assert len(commands) <= MAX_COMMANDS_PER_APPEND, "batch larger than the append limit"
        if not commands:
            return PendingAppend(self, None, [], [])
        script_keys, args = self.encode(commands)
        self._direct.send([("EVALSHA", self._script.sha, len(script_keys), *script_keys, *args)])
        return PendingAppend(self, self._direct, script_keys, args)

    def encode(self, commands: Sequence[PreparedCommand]) -> tuple[list[str], list[str | bytes | int]]:
        """The script's KEYS and ARGV for a batch (see append.lua for the layout)."""
        script_keys: list[str] = [self._keys.events, self._keys.seq]
        args: list[str | bytes | int] = [self._outcome_ttl_s, len(commands)]
        for command in commands:
            script_keys.append(command.outcome_key)
            args += [len(command.accounts), len(command.events), "plain" if command.reply_suffix is None else "seq",
                     command.reply_prefix, command.reply_suffix or b""]
            for account in command.accounts:
                script_keys.append(account.key)
                args.append(account.expected_version)
                args.append(len(account.fields))
                for name, value in account.fields.items():
                    args.append(name)
                    args.append(value)
            for event in command.events:
                args += [event.type, event.prefix, event.suffix]
        return script_keys, args

    def run_encoded(self, script_keys: list[str], args: list[str | bytes | int]) -> list[AppendResult]:
        try:
            raw = self._script(keys=script_keys, args=args)
        except redis.ResponseError as error:
            if "APPEND_BAD_ARGS" in str(error):
                raise AppendError(str(error)) from error
            raise
        return parse_results(raw)


# The script's status words, as bytes (RESP2 replies) and as text: a dict lookup, not an enum call per command.
_STATUSES: dict[bytes | str, AppendStatus] = {**{s.value: s for s in AppendStatus},
                                               **{s.value.encode(): s for s in AppendStatus}}


def parse_results(raw: list[bytes | str | int]) -> list[AppendResult]:
    """The script's flat ``{status, seq or stored outcome, ...}`` reply as results, in command order."""
    results = []
    for i in range(0, len(raw), 2):
        status = _STATUSES.get(raw[i])  # type: ignore[arg-type]
        if status is None:
            raise AppendError(f"the append script answered an unknown status {raw[i]!r}")
        detail = raw[i + 1]
        if status is AppendStatus.DUPLICATE:
            stored = detail if isinstance(detail, bytes) else str(detail).encode()
            results.append(AppendResult(status, 0, stored))
        else:
            results.append(AppendResult(status, int(detail)))
    return results


class PendingAppend:
    """An append sent on a connection of its own whose reply is read later (see :meth:`Appender.send`)."""

    def __init__(self, appender: Appender, connection: DirectConnection | None,
                 script_keys: list[str], args: list[str | bytes | int]) -> None:
        self._appender = appender
        self._connection = connection
        self._keys = script_keys
        self._args = args

    def results(self) -> list[AppendResult]:
        connection = self._connection
        if connection is None:
            return []
        self._connection = None
        try:
            (raw,) = connection.read()  # on a lost reply the connection is closed: the next send starts afresh
        except redis.exceptions.NoScriptError:  # a restarted Redis forgot the script: it did not run, so run it now
            return self._appender.run_encoded(self._keys, self._args)
        except redis.ResponseError as error:
            if "APPEND_BAD_ARGS" in str(error):
                raise AppendError(str(error)) from error
            raise
        return parse_results(raw)
