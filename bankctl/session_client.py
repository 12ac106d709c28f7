"""A logged-in user's connection to the bank: load the saved session, send commands and queries.

Shared by the banking commands, the read commands and the interactive shell, so they all map failures to
the same exit codes and all carry read-your-writes: every successful command remembers its ``seq`` and
every query sends the last one as ``min_seq``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis

from bankctl.config import Settings
from bankctl.last_seq import recall, remember
from bankctl.output import BankctlError, Exit, raise_for_reply
from bankctl.profile import ProfileError, SavedSession, load_session
from commands.client import BankClient, BankUnavailable, Request
from eventstore.transport import SEALED_FIELD, TransportError, fetch_public_key, seal_fields

T = TypeVar("T")


def load_saved_session(settings: Settings) -> SavedSession:
    """The profile's session, or exit 4 with a hint to log in."""
    try:
        session = load_session(settings.profile)
    except (ProfileError, ValueError) as error:
        raise BankctlError(str(error), Exit.DENIED, "not_permitted") from error
    if session is None:
        raise BankctlError("not logged in: run 'bankctl login'", Exit.DENIED, "unauthenticated")
    return session


class BankSession:
    """Requests on behalf of one saved session."""

    def __init__(self, settings: Settings, session: SavedSession, *, timeout_s: float | None = None) -> None:
        self.settings = settings
        self.session = session
        self._timeout_s = timeout_s
        self._bank: BankClient | None = None
        self.last_seq = 0  # this object's own last write, for sessions that are never saved (the shell)

    @classmethod
    def from_profile(cls, settings: Settings) -> BankSession:
        return cls(settings, load_saved_session(settings))

    @property
    def account_id(self) -> int:
        return self.session.account_id

    @property
    def is_admin(self) -> bool:
        return self.session.role == "admin"

    def _client(self) -> BankClient:
        if self._bank is None:
            client = self.settings.connect_bus("client")
            self._bank = (BankClient(client, keys=self.settings.keys) if self._timeout_s is None
                          else BankClient(client, keys=self.settings.keys, timeout_s=self._timeout_s))
        return self._bank

    def seal_personal(self, fields: dict[str, Any]) -> str:
        """Personal fields sealed to the bank's transport key: no plaintext SSN ever enters Redis."""
        try:
            return self._roundtrip(lambda bank: seal_fields(fetch_public_key(bank.client, self.settings.keys), fields))
        except TransportError as error:
            raise BankctlError(str(error), Exit.UNAVAILABLE, "unavailable") from error

    def command(
        self, request_type: str, payload: dict[str, Any], *, personal: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """Send a command, its ``personal`` fields sealed in transit.

        An ok reply is returned (and its seq remembered); a refusal is raised as :class:`BankctlError`.
        """
        if personal:
            sealed = {name: payload[name] for name in personal if name in payload}
            clear = {k: v for k, v in payload.items() if k not in sealed}
            payload = clear | {SEALED_FIELD: self.seal_personal(sealed)}
        reply = raise_for_reply(self._roundtrip(lambda bank: bank.command(
            Request(type=request_type, payload=payload, session=self.session.token))))
        if isinstance(reply.get("seq"), int):
            self.last_seq = max(self.last_seq, reply["seq"])
            remember(self.settings.profile, self.session.server_id, reply["seq"])
        return reply

    def command_batch(self, requests: list[Request]) -> list[dict[str, Any]]:
        """Send up to ``MAX_BATCH_COMMANDS`` commands as one request: every outcome, in order, refusals included
        (not raised: one rejected command does not make the others fail). The highest seq is remembered."""
        results = self._roundtrip(lambda bank: bank.command_batch(requests, session=self.session.token))
        seqs = [r["seq"] for r in results if r.get("ok") and isinstance(r.get("seq"), int)]
        if seqs:
            self.last_seq = max(self.last_seq, *seqs)
            remember(self.settings.profile, self.session.server_id, max(seqs))
        return results

    def query(self, query_type: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a query that waits until the read model has this profile's own last write."""
        min_seq = max(self.last_seq, recall(self.settings.profile, self.session.server_id))
        return raise_for_reply(self._roundtrip(lambda bank: bank.query(
            Request(type=query_type, payload=payload, session=self.session.token, min_seq=min_seq))))

    def _roundtrip(self, call: Callable[[BankClient], T]) -> T:
        return call_bank(lambda: call(self._client()))


def call_bank(call: Callable[[], T]) -> T:
    """Run one exchange with the bank, turning transport failures into the documented exit codes."""
    try:
        return call()
    except BankUnavailable as error:
        raise BankctlError(str(error), Exit.UNAVAILABLE, "unavailable") from error
    except redis.AuthenticationError as error:
        raise BankctlError(f"Redis refused our credentials: {error}", Exit.DENIED, "not_permitted") from error
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError) as error:
        raise BankctlError(f"the bank is not reachable ({error}): try 'bankctl up'", Exit.UNAVAILABLE,
                           "unavailable") from error
