"""Every Redis key name of the bank, in one place.

All keys share one hash tag so every script touches a single Redis Cluster slot; a later partitioned layout
uses ``{bank:pN}`` (DESIGN §3, §11).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one partition of the bank."""

    tag: str = "bank"

    def _k(self, suffix: str) -> str:
        return "{" + self.tag + "}:" + suffix

    @property
    def events(self) -> str:
        return self._k("events")

    @property
    def seq(self) -> str:
        return self._k("seq")

    @property
    def account_ids(self) -> str:
        """Counter that hands out new account numbers (gaps allowed, never reused)."""
        return self._k("account_ids")

    @property
    def commands(self) -> str:
        return self._k("commands")

    @property
    def queries(self) -> str:
        return self._k("queries")

    @property
    def seals(self) -> str:
        return self._k("seals")

    @property
    def prefix(self) -> str:
        return self._k("")

    def account(self, account_id: int) -> str:
        return f"{{{self.tag}}}:acct:{account_id}"  # one f-string: built several times per command

    def command_outcome(self, command_id: str) -> str:
        return f"{{{self.tag}}}:cmd:{command_id}"

    def reply(self, request_id: str) -> str:
        return self._k(f"reply:{request_id}")

    def dead(self, name: str) -> str:
        return self._k(f"dead:{name}")

    def worker(self, name: str) -> str:
        return self._k(f"worker:{name}")

    @property
    def transport_key(self) -> str:
        """The bank's public X25519 key that clients seal personal fields to (published by the handlers)."""
        return self._k("transport_key")

    @property
    def auth_secret(self) -> str:
        """Server secret for decoy salts of unknown accounts (created once, shared by every handler)."""
        return self._k("auth:decoy_secret")

    def sms_lease(self, event_id: str, account_id: int) -> str:
        """The short sending lease of one SMS (Twilio only): which notifier is calling the API for it."""
        return self._k(f"sms:{event_id}:{account_id}")

    def sms_ledger(self, bucket: int) -> str:
        """The delivery records (sent or dead) of the SMS about one range of seqs: the notifier's dedupe hash."""
        return self._k(f"sms:ledger:{bucket}")

    @property
    def notifier_lease(self) -> str:
        """Which notifier is the active one (its name, with an expiry it keeps renewing)."""
        return self._k("notifier:lease")

    @property
    def notifier_checkpoint(self) -> str:
        """The seq up to which every event's messages are sent, already sent, skipped or dead-lettered."""
        return self._k("notifier:checkpoint")

    def notifier_outbox_offset(self, outbox_digest: str) -> str:
        """Byte offset up to which an outbox file's lines are recorded in the delivery ledger."""
        return self._k(f"notifier:outbox:{outbox_digest}:offset")

    def data_key(self, account_id: int) -> str:
        """Wrapped per-customer data key; deleting it crypto-shreds the customer's personal data."""
        return self._k(f"dek:{account_id}")

    def challenge(self, challenge_id: str) -> str:
        return self._k(f"chal:{challenge_id}")

    def session(self, session_id: str) -> str:
        """A session record: principal and wrapped key (see auth_zkp.sessions)."""
        return self._k(f"sess:{session_id}")

    def account_sessions(self, account_id: int) -> str:
        """The ids of an account's sessions, for revoking them all (a session id never contains ':')."""
        return self._k(f"sess:acct:{account_id}")

    def login_failures(self, account_id: int) -> str:
        return self._k(f"fail:{account_id}")


KEYS = Keys()
