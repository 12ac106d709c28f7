"""The notifier with the outbox sender, on fakeredis and a real redis-server (contract: ``any_redis``)."""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from pathlib import Path

import orjson
import pytest
from helpers_notifier import FakeBank

from notifier.delivery import Ledger
from notifier.senders import OutboxSender, OutboxUnwritable
from notifier.worker import GROUP, Notifier


def make(client, keys, outbox: Path, *, bank=None, consumer="n1", **options):
    bank = bank or FakeBank(client, keys)
    notifier = Notifier(client, keys=keys, vault=bank.vault, sender=OutboxSender(outbox), consumer=consumer,
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


def pending(client, keys) -> int:
    return client.xpending(keys.events, GROUP)["pending"]


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
    assert pending(any_redis, keys) == 0
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
    any_redis.xgroup_destroy(keys.events, GROUP)
    _, restarted = make(any_redis, keys, tmp_path / "outbox2.jsonl", bank=bank, consumer="n2")
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
    assert len(lines(outbox)) == 5 and pending(any_redis, keys) == 5, "the deposits stay unacknowledged"
    _, restarted = make(any_redis, keys, outbox, bank=bank)
    drain(restarted)
    assert Counter((m["event_id"], m["account"]) for m in lines(outbox)) == expected_messages(bank, set(accounts))
    assert restarted.sender.reconciled == 5 and restarted.counters["duplicates"] == 5
    assert pending(any_redis, keys) == 0


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


def test_a_second_notifier_takes_over_a_dead_ones_pending_events(any_redis, keys, tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    bank = FakeBank(any_redis, keys)
    with bank.batch():
        accounts = [bank.open(sms=True) for _ in range(3)]
        for account in accounts:
            bank.deposit(account, 100)
    _, dead = make(any_redis, keys, outbox, bank=bank, consumer="dead-one")
    dead.group.ensure("0")
    taken = dead.group.read_new(count=100, block_ms=None)  # delivered, then the process died
    assert len(taken) == 9
    _, peer = make(any_redis, keys, outbox, bank=bank, consumer="peer", failover_ms=2000)
    drain(peer)
    assert not outbox.exists() or lines(outbox) == [], "not before the failover threshold"
    # Backdate the dead consumer's entries (XCLAIM IDLE), as if 10 s had passed.
    any_redis.xclaim(keys.events, GROUP, "dead-one", 0, [e for e, _f in taken], idle=10_000, justid=True)
    peer._next_claim = 0.0
    drain(peer)
    assert Counter((m["event_id"], m["account"]) for m in lines(outbox)) == expected_messages(bank, set(accounts))
    assert peer.counters["claimed"] == 9 and pending(any_redis, keys) == 0


def test_outbox_write_failure_stops_the_worker_without_acknowledging(any_redis, keys, tmp_path, monkeypatch):
    outbox = tmp_path / "outbox.jsonl"
    bank, notifier = make(any_redis, keys, outbox)
    bank.deposit(bank.open(sms=True), 100)

    def disk_full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("notifier.senders.os.fsync", disk_full)
    with pytest.raises(OutboxUnwritable):
        drain(notifier)
    assert pending(any_redis, keys) == 1, "the deposit stays unacknowledged"
    assert outbox.read_bytes() == b"", "the unsynced lines were taken back"


def test_two_notifiers_in_one_group_split_the_work_without_doubles(any_redis, keys, tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    bank = FakeBank(any_redis, keys)
    _, first = make(any_redis, keys, outbox, bank=bank, consumer="a", read_count=7)
    _, second = make(any_redis, keys, outbox, bank=bank, consumer="b", read_count=7)
    with bank.batch():
        accounts = [bank.open(sms=True) for _ in range(10)]
        for account in accounts:
            bank.deposit(account, 100)
            bank.transfer(account, accounts[0] if account != accounts[0] else accounts[1], 50)
    for _ in range(20):
        first.poll_once()
        second.poll_once()
    assert first.counters["sent"] > 0 and second.counters["sent"] > 0
    assert Counter((m["event_id"], m["account"]) for m in lines(outbox)) == expected_messages(bank, set(accounts))


def test_a_number_that_does_not_open_is_dead_lettered_and_nothing_is_sent(any_redis, keys, tmp_path):
    """A sealed phone that fails authentication (tampered): a dead letter naming the event, no SMS for it, the
    event acknowledged; the other customers are texted as usual."""
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
    assert pending(any_redis, keys) == 0
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


def test_a_notifier_given_another_master_key_stops_and_leaves_the_events_pending(any_redis, keys, tmp_path):
    from eventstore.pii import PersonalDataVault
    from eventstore.worker import FatalWorkerError

    outbox = tmp_path / "outbox.jsonl"
    bank = FakeBank(any_redis, keys)
    with bank.batch():
        alice = bank.open(phone="+15550000101", sms=True)
        bank.deposit(alice, 1_000)
    stranger = PersonalDataVault(any_redis, keys=keys, master_key=os.urandom(32))
    notifier = Notifier(any_redis, keys=keys, vault=stranger, sender=OutboxSender(outbox), consumer="n1",
                        block_ms=None)
    with pytest.raises(FatalWorkerError, match="does not open with this master key"):
        drain(notifier)
    assert not outbox.exists() or outbox.read_bytes() == b""
    assert pending(any_redis, keys) > 0  # nothing acknowledged: a notifier with the right key sends it
    _, fixed = make(any_redis, keys, outbox, bank=bank, consumer="n1")
    drain(fixed)
    assert [m["account"] for m in lines(outbox)] == [alice]
