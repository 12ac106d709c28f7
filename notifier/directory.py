"""The contact directory: who may be texted, at which number, rebuilt from the log itself.

Why the whole log and not only what the notifier texts about: a notifier starts at its checkpoint, but the
contacts it needs were opened and updated anywhere before. So the directory follows ``{bank}:events`` by seq on its
own (XRANGE, gapless) up to the head when a notifier becomes the active one, and then takes every event the
notifier reads. On start it is empty and catches up from seq 1 (choice: rebuild from the log on start; it reads only
the fields ``seq``/``type`` of uninteresting entries, so a million-event log costs seconds, and there is no second
copy of contact data to keep consistent or to erase).

Semantics: an event is texted only if the customer was opted in when it happened, and is still opted in (and not
erased) as far as the notifier knows when it handles it: a later opt-out or erasure wins (privacy first), a later
opt-in does not reach back to older events. The number used is the newest one the notifier knows.
Phone numbers stay sealed in memory until needed; an erased customer's number is dropped and their cached data
key forgotten, and opening a sealed field of an erased customer yields ``[erased]``, which is never a number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from eventstore.keys import Keys
from eventstore.log import read_range
from eventstore.pii import ERASED, PersonalDataVault

DIRECTORY_TYPES = frozenset({"AccountOpened", "ProfileUpdated", "AccountClosed", "CustomerDataErased"})
CATCH_UP_PAGE = 5000


class DirectoryGap(RuntimeError):
    """The log skipped a seq: the directory could miss an opt-out, so the notifier must stop."""


class ContactUnreadable(RuntimeError):
    """A sealed phone number failed authentication (tampered or wrong master key)."""


@dataclass(slots=True)
class Contact:
    account: int
    phone_sealed: str | None = None
    phone: str | None = None
    """The opened number, cached after first use; cleared whenever the sealed value changes."""
    sms_opt_in: bool = False
    opted_in_at: int = 0
    """Seq of the event that last turned the opt-in on; only later events are texted."""
    closed: bool = False
    erased: bool = False


class ContactDirectory:
    """Account id -> contact, as of :attr:`applied_seq`."""

    def __init__(self, vault: PersonalDataVault) -> None:
        self._vault = vault
        self._contacts: dict[int, Contact] = {}
        self.applied_seq = 0

    def __len__(self) -> int:
        return len(self._contacts)

    def contact(self, account: int) -> Contact | None:
        return self._contacts.get(account)

    def apply(self, event_type: str, data: dict[str, Any], seq: int) -> None:
        """Fold one directory event (at ``seq``) into the contacts (other types are ignored)."""
        if event_type not in DIRECTORY_TYPES:
            return
        account = int(data["account"])
        contact = self._contacts.setdefault(account, Contact(account))
        if event_type == "AccountOpened":
            contact.phone_sealed = data.get("phone") or None
            contact.phone = None
            self._set_opt_in(contact, bool(data.get("sms_opt_in", False)), seq)
        elif event_type == "ProfileUpdated":
            if "phone" in data:
                contact.phone_sealed = data["phone"] or None
                contact.phone = None
            if "sms_opt_in" in data:
                self._set_opt_in(contact, bool(data["sms_opt_in"]), seq)
        elif event_type == "AccountClosed":
            contact.closed = True
        elif event_type == "CustomerDataErased":
            contact.erased = True
            contact.sms_opt_in = False
            contact.phone_sealed = None
            contact.phone = None
            self._vault.forget_cached(account)

    @staticmethod
    def _set_opt_in(contact: Contact, opted_in: bool, seq: int) -> None:
        if opted_in and not contact.sms_opt_in:
            contact.opted_in_at = seq
        contact.sms_opt_in = opted_in

    def apply_entries(self, entries: Iterable[tuple[int, str, bytes]]) -> None:
        """Apply ``(seq, type, body)`` in log order, checking the seq is gapless."""
        for seq, event_type, body in entries:
            if seq <= self.applied_seq:
                continue
            if seq != self.applied_seq + 1:
                raise DirectoryGap(f"log jumped from seq {self.applied_seq} to {seq}")
            if event_type in DIRECTORY_TYPES:
                self.apply(event_type, orjson.loads(body)["data"], seq)
            self.applied_seq = seq

    def prefetch_phones(self, accounts: Iterable[int]) -> None:
        """Fetch the data keys of the contacts whose number is not open yet, in one round trip."""
        self._vault.prefetch(a for a in accounts
                             if (c := self._contacts.get(a)) is not None and c.phone is None and c.phone_sealed)

    def catch_up(self, client: redis.Redis, keys: Keys, upto_seq: int) -> int:
        """Read the log until :attr:`applied_seq` >= ``upto_seq``; returns how many entries were read."""
        read = 0
        while self.applied_seq < upto_seq:
            page = read_range(client, keys, self.applied_seq + 1, upto_seq, count=CATCH_UP_PAGE)
            if not page:
                raise DirectoryGap(f"log ends at seq {self.applied_seq}, expected up to {upto_seq}")
            self.apply_entries((event.seq, event.type, event.body) for event in page)
            read += len(page)
        return read

    def phone_for(self, account: int, event_seq: int) -> str | None:
        """The number to text about the event at ``event_seq``, or ``None`` when the customer must get nothing
        (unknown, not opted in then or now, erased)."""
        contact = self._contacts.get(account)
        if contact is None or contact.erased or not contact.sms_opt_in or not contact.phone_sealed:
            return None
        if contact.opted_in_at >= event_seq:
            return None
        if contact.phone is None:
            try:
                opened = self._vault.open(account, "phone", contact.phone_sealed)
            except ValueError as error:
                raise ContactUnreadable(str(error)) from error
            if opened == ERASED:
                return None
            contact.phone = opened
        return contact.phone
