"""The notifier with the outbox sender, on fakeredis and a real redis-server (contract: ``any_redis``)."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from helpers_notifier import FakeBank

from eventstore.log import last_seq
from notifier.delivery import Ledger
from notifier.senders import OutboxSender, OutboxUnwritable
from notifier.status import notifier_status
from notifier.worker import Notifier


def make(client, keys, outbox: Path, *, bank=None, name="n1", **options):
    bank = bank or FakeBank(client, keys)
    notifier = Notifier(client, keys=keys, vault=bank.vault, sender=OutboxSender(outbox), name=name,
                        block_ms=None, **options)
    return bank, notifier


def drain(notifier: Notifier) -> None:
    for _ in range(100):
        if notifier.poll_once() == 0:
            return
    raise AssertionError("notifier never went idle")


def lines(outbox: Path) -> list[dict]:
    return [orjson.loads(line) for line in outbox.read_bytes().splitlines()]


def expected_messages(bank: FakeBank, opted_in: set[int]) -> Counter:
    notified = {"MoneyDeposited", "MoneyWithdrawn", "MoneyTransferred", "PasswordChanged", "AccountLocked",
                "AccountClosed"}
    return Counter((event_id, account) for event_id, event_type, accounts in bank.event_ids
                   if event_type in notified for account in accounts if account in opted_in)


def unsettled(client, keys) -> int:
    """Events after the notifier's checkpoint: a restart or a successor reads them again."""
    return notifier_status(client, keys)["lag"]


def test_one_message_per_event_and_party_for_opted_in_customers_only(any_redis, keys, tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    bank, notifier = make(any_redis, keys, outbox)
    with bank.batch():
        alice = bank.open(phone="+15550000101", sms=True)
        bob = bank.open(phone="+15550000202", sms=False)
        carol = bank.open(phone="+15550000303", sms=True)
        bank.deposit(alice, 10_000)
        bank.withdraw(alice, 1_000)
        bank.transfer(alice, bob, 2_000)
        bank.transfer(alice, carol, 3_000)
        bank.deposit(bob, 500)
        bank.change_password(alice)
        bank.lock(carol)
        bank.withdraw(carol, 3_000)
        bank.close(carol)
    drain(notifier)
    written = lines(outbox)
    assert Counter((m["event_id"], m["account"]) for m in written) == expected_messages(bank, {alice, carol})
    assert {m["to"] for m in written} == {"+15550000101", "+15550000303"}
    assert not any("+15550000202" in line for line in outbox.read_text().splitlines())
    by_type = Counter((m["account"], m["type"]) for m in written)
    assert by_type[(alice, "MoneyTransferred")] == 2 and by_type[(carol, "MoneyTransferred")] == 1
    assert by_type[(carol, "AccountClosed")] == 1 and by_type[(carol, "AccountLocked")] == 1
    assert unsettled(any_redis, keys) == 0
    assert stat.S_IMODE(os.stat(outbox).st_mode) == 0o600


def test_opt_in_changes_apply_from_the_next_event(any_redis, keys, tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    bank, notifier = make(any_redis, keys, outbox)
    account = bank.open(sms=False)
    bank.deposit(account, 100)
    drain(notifier)
    bank.update(account, sms=True)
    bank.deposit(account, 200)
    drain(notifier)
    bank.update(account, phone="+15559999999")
    bank.deposit(account, 300)
    drain(notifier)
    assert [(m["to"], m["body"].split(". ")[0]) for m in lines(outbox)] == [
        ("+15550000001", "Fintech Fortress: Deposit of 2.00 on account ****0001"),
        ("+15559999999", "Fintech Fortress: Deposit of 3.00 on account ****0001"),
    ]


def test_erased_customer_gets_nothing_and_their_number_appears_in_no_new_line(any_redis, keys, tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    bank, notifier = make(any_redis, keys, outbox)
    secret_number = "+15554443322"
    erased = bank.open(phone=secret_number, sms=True)
    other = bank.open(sms=True)
    bank.deposit(erased, 500)
    drain(notifier)
    assert secret_number in outbox.read_text(), "it was texted while a customer"
    before = outbox.stat().st_size
    # Close and erase while the notifier is behind: even the closure notice must not go out.
    bank.withdraw(erased, 500)
    bank.close(erased)
    bank.erase(erased)
    bank.deposit(other, 100)
    drain(notifier)
    # A fresh notifier (restart) rebuilds the directory from the whole log and still sends nothing to them.
    any_redis.delete(keys.notifier_checkpoint, keys.notifier_lease)  # read the whole log again
    _, restarted = make(any_redis, keys, tmp_path / "outbox2.jsonl", bank=bank, name="n2")
    drain(restarted)
    new_text = outbox.read_bytes()[before:].decode() + (tmp_path / "outbox2.jsonl").read_text()
    assert new_text, "other customers' messages did go out"
    assert secret_number not in new_text
    assert all(m["account"] != erased for m in map(orjson.loads, new_text.splitlines()))


def test_crash_between_outbox_write_and_ledger_record_does_not_double(any_redis, keys, tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    bank, crashing = make(any_redis, keys, outbox)
    with bank.batch():
        accounts = [bank.open(sms=True) for _ in range(5)]
        for account in accounts:
            bank.deposit(account, 100)
    real_record = Ledger.record_sent

    def crash_after_fsync(self, refs, *, extra=None):
        if refs:
            raise KeyboardInterrupt("killed after fsync, before the ledger write")
        return real_record(self, refs, extra=extra)

    crashing.ledger.record_sent = crash_after_fsync.__get__(crashing.ledger)
    with pytest.raises(KeyboardInterrupt):
        drain(crashing)
    assert len(lines(outbox)) == 5 and notifier_status(any_redis, keys)["checkpoint"] == 0, \
        "the checkpoint stays before the deposits"
    _, restarted = make(any_redis, keys, outbox, bank=bank)
    drain(restarted)
    assert Counter((m["event_id"], m["account"]) for m in lines(outbox)) == expected_messages(bank, set(accounts))
    assert restarted.sender.reconciled == 5 and restarted.counters["duplicates"] == 5
    assert unsettled(any_redis, keys) == 0


def test_a_torn_last_line_is_cut_and_the_message_written_again(any_redis, keys, tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    bank, notifier = make(any_redis, keys, outbox)
    account = bank.open(sms=True)
    bank.deposit(account, 100)
    drain(notifier)
    with outbox.open("ab") as handle:
        handle.write(b'{"event_id":"half-writ')
    bank.deposit(account, 200)
    drain(notifier)
    assert [m["type"] for m in lines(outbox)] == ["MoneyDeposited", "MoneyDeposited"]


def test_a_standby_takes_over_once_the_dead_ones_lease_expires(any_redis, keys, tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    bank = FakeBank(any_redis, keys)
    with bank.batch():
        accounts = [bank.open(sms=True) for _ in range(3)]
        for account in accounts:
            bank.deposit(account, 100)
    _, dead = make(any_redis, keys, outbox, bank=bank, name="dead-one")
    assert dead.lease.hold() == 0  # it took the lease, then the process died
    _, peer = make(any_redis, keys, outbox, bank=bank, name="peer")
    drain(peer)
    assert not outbox.exists() or lines(outbox) == [], "not while the dead one's lease lasts"
    assert notifier_status(any_redis, keys)["active"] == "dead-one"
    any_redis.pexpire(keys.notifier_lease, 1)  # as if LEASE_MS had passed
    time.sleep(0.01)
    drain(peer)
    assert Counter((m["event_id"], m["account"]) for m in lines(outbox)) == expected_messages(bank, set(accounts))
    assert peer.counters["takeovers"] == 1 and unsettled(any_redis, keys) == 0
    assert notifier_status(any_redis, keys)["active"] == "peer"


def test_outbox_write_failure_stops_the_worker_without_settling_the_event(any_redis, keys, tmp_path, monkeypatch):
    outbox = tmp_path / "outbox.jsonl"
    bank, notifier = make(any_redis, keys, outbox)
    bank.deposit(bank.open(sms=True), 100)

    def disk_full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("notifier.senders.os.fsync", disk_full)
    with pytest.raises(OutboxUnwritable):
        drain(notifier)
    assert unsettled(any_redis, keys) >= 1, "the deposit stays after the checkpoint"
    assert outbox.read_bytes() == b"", "the unsynced lines were taken back"


def test_of_two_notifiers_one_works_and_the_other_takes_over_at_a_clean_stop(any_redis, keys, tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    bank = FakeBank(any_redis, keys)
    _, first = make(any_redis, keys, outbox, bank=bank, name="a", read_count=7)
    _, second = make(any_redis, keys, outbox, bank=bank, name="b", read_count=7)

    def activity() -> None:
        with bank.batch():
            for account in accounts:
                bank.deposit(account, 100)
                bank.transfer(account, accounts[0] if account != accounts[0] else accounts[1], 50)

    with bank.batch():
        accounts = [bank.open(sms=True) for _ in range(10)]
    activity()
    for _ in range(20):
        first.poll_once()
        second.poll_once()
    assert first.counters["sent"] > 0 and second.counters["sent"] == 0 and not second.active
    first.stop()  # the checkpoint written, the lease handed back
    activity()
    drain(second)
    assert second.active and second.counters["duplicates"] == 0, "it starts where the first one stopped"
    assert Counter((m["event_id"], m["account"]) for m in lines(outbox)) == expected_messages(bank, set(accounts))
    assert unsettled(any_redis, keys) == 0


def test_a_number_that_does_not_open_is_dead_lettered_and_nothing_is_sent(any_redis, keys, tmp_path):
    """A sealed phone that fails authentication (tampered): a dead letter naming the event, no SMS for it, the
    event settled; the other customers are texted as usual."""
    outbox = tmp_path / "outbox.jsonl"
    bank, notifier = make(any_redis, keys, outbox)
    with bank.batch():
        alice = bank.open(phone="+15550000101", sms=True)
        bob = bank.open(phone="+15550000202", sms=True)
    drain(notifier)
    contact = notifier.directory._contacts[alice]
    sealed = contact.phone_sealed
    contact.phone, contact.phone_sealed = None, sealed[:-6] + ("AAAAAA" if not sealed.endswith("AAAAAA") else "BBBBBB")
    bank.deposit(alice, 1_000)
    bank.deposit(bob, 2_000)
    drain(notifier)
    assert [(m["account"], m["to"]) for m in lines(outbox)] == [(bob, "+15550000202")]
    dead = any_redis.xrange(keys.dead("notifier"))
    assert [(int(f[b"account"]), f[b"code"], f[b"type"]) for _id, f in dead] == [
        (alice, b"contact_unreadable", b"MoneyDeposited")]
    assert b"+1555" not in b"".join(v for _id, f in dead for v in f.values())
    assert unsettled(any_redis, keys) == 0
    assert notifier.counters["dead"] == 1


def test_at_the_head_the_notifier_pauses_between_reads_and_never_while_behind(any_redis, keys, tmp_path):
    pauses: list[float] = []
    bank, notifier = make(any_redis, keys, tmp_path / "outbox.jsonl", read_count=4, linger_s=0.05,
                          sleep=pauses.append)
    with bank.batch():
        alice = bank.open(phone="+15550000101", sms=True)
        for _ in range(5):
            bank.deposit(alice, 100)  # 6 events: a full read of 4, then 2
    assert notifier.poll_once() > 0 and pauses == []  # behind: read on at once
    assert notifier.poll_once() > 0 and pauses == [0.05]  # caught up: pause before the next read
    assert notifier.poll_once() == 0 and pauses == [0.05]  # nothing read: the blocking read is the wait
    assert len(lines(tmp_path / "outbox.jsonl")) == 5


def test_a_notifier_given_another_master_key_stops_and_leaves_the_events_unsettled(any_redis, keys, tmp_path):
    from eventstore.pii import PersonalDataVault
    from eventstore.worker import FatalWorkerError

    outbox = tmp_path / "outbox.jsonl"
    bank = FakeBank(any_redis, keys)
    with bank.batch():
        alice = bank.open(phone="+15550000101", sms=True)
        bank.deposit(alice, 1_000)
    stranger = PersonalDataVault(any_redis, keys=keys, master_key=os.urandom(32))
    notifier = Notifier(any_redis, keys=keys, vault=stranger, sender=OutboxSender(outbox), name="n1",
                        block_ms=None)
    with pytest.raises(FatalWorkerError, match="does not open with this master key"):
        drain(notifier)
    assert not outbox.exists() or outbox.read_bytes() == b""
    assert unsettled(any_redis, keys) > 0  # nothing settled: a notifier with the right key sends it
    _, fixed = make(any_redis, keys, outbox, bank=bank, name="n1")
    drain(fixed)
    assert [m["account"] for m in lines(outbox)] == [alice]


def test_after_an_upgrade_the_first_notifier_starts_where_the_consumer_group_left_off(any_redis, keys, tmp_path):
    """A bank whose notifiers read in the consumer group ``notifier``: texted events are not read again, the ones
    delivered but never acknowledged are (the ledger stops repeats of those that had gone out)."""
    outbox = tmp_path / "outbox.jsonl"
    bank = FakeBank(any_redis, keys)
    with bank.batch():
        accounts = [bank.open(sms=True) for _ in range(4)]
    deposits_from = last_seq(any_redis, keys) + 1
    with bank.batch():
        for account in accounts:
            bank.deposit(account, 100)
    any_redis.xgroup_create(keys.events, "notifier", id="0")
    delivered = any_redis.xreadgroup("notifier", "old", {keys.events: ">"}, count=deposits_from + 2)[0][1]
    any_redis.xack(keys.events, "notifier", *[entry_id for entry_id, _ in delivered[:-2]])  # two left pending
    _, notifier = make(any_redis, keys, outbox, bank=bank)
    drain(notifier)
    assert [m["seq"] for m in lines(outbox)] == list(range(deposits_from, deposits_from + 4))[-3:], \
        "from the oldest unacknowledged event on"
    assert unsettled(any_redis, keys) == 0


def test_a_notifier_that_lost_its_lease_while_frozen_stands_by_and_leaves_the_checkpoint_alone(
        any_redis, keys, tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    clock = [0.0]
    bank, frozen = make(any_redis, keys, outbox, clock=lambda: clock[0])
    alice = bank.open(sms=True)
    bank.deposit(alice, 100)
    drain(frozen)
    settled = notifier_status(any_redis, keys)["checkpoint"]
    # Its lease expired while it was frozen, and a standby took it.
    any_redis.set(keys.notifier_lease, "successor", px=60_000)
    clock[0] += 10.0  # it thaws
    bank.deposit(alice, 200)
    frozen.poll_once()  # it sends what it read (the ledger keeps the successor from repeating it) ...
    assert not frozen.active, "... and at its next checkpoint write finds the lease gone"
    assert notifier_status(any_redis, keys)["checkpoint"] == settled, "the checkpoint is the successor's"
    bank.deposit(alice, 300)
    drain(frozen)
    amounts = [m["body"].split("Deposit of ")[1].split(" ")[0] for m in lines(outbox)]
    assert amounts == ["1.00", "2.00"], "nothing after it stood by"
