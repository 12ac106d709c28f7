"""Pure parts of the notifier: templates, the contact directory, failure classification, backoff, the ledger."""

from __future__ import annotations

import os
import random
import re

import pytest
import requests
from helpers_notifier import FakeBank
from hypothesis import given
from hypothesis import strategies as st
from twilio.base.exceptions import TwilioRestException

from eventstore.log import read_range
from eventstore.pii import PersonalDataVault
from notifier.delivery import (
    LEDGER_BUCKET_EVENTS,
    Failure,
    Ledger,
    Message,
    RetryPolicy,
    SmsId,
    Status,
    Verdict,
    classify,
    fatal_exit_code,
)
from notifier.directory import ContactDirectory, DirectoryGap
from notifier.templates import MAX_SMS_CHARS, NOTIFIED_TYPES, mask_account, notices_for, short_time

WHEN = "2026-11-24T01:02:03.123456Z"
LATER = 10**6


def test_mask_keeps_only_the_last_four_digits():
    assert mask_account(42) == "****0042"
    assert mask_account(123456) == "****3456"
    assert mask_account(0) == "****0000"


def test_deposit_message_says_what_amount_account_balance_and_time():
    [notice] = notices_for("MoneyDeposited", {"account": 42, "amount": 1230, "balance_after": 11230}, WHEN)
    assert notice.account == 42
    assert notice.body == "Fintech Fortress: Deposit of 12.30 on account ****0042. Balance 112.30. 2026-11-24 01:02 UTC"


def test_transfer_tells_each_party_their_own_leg_and_never_the_other_party():
    data = {"from": 1001, "to": 2002, "amount": 500, "from_balance_after": 100, "to_balance_after": 900}
    out, into = notices_for("MoneyTransferred", data, WHEN)
    assert (out.account, into.account) == (1001, 2002)
    assert "Transfer out 5.00" in out.body and "Balance 1.00" in out.body and "2002" not in out.body
    assert "Transfer in 5.00" in into.body and "Balance 9.00" in into.body and "1001" not in into.body


def test_security_and_closure_messages_and_silence_for_other_types():
    assert "password" in notices_for("PasswordChanged", {"account": 3}, WHEN)[0].body
    locked = notices_for("AccountLocked", {"account": 3, "until": 1_790_000_000, "failures": 5}, WHEN)[0].body
    assert "locked" in locked and "UTC" in locked
    assert "closed" in notices_for("AccountClosed", {"account": 3}, WHEN)[0].body
    for other in ("AccountOpened", "ProfileUpdated", "CredentialsRegistered", "CustomerDataErased", "Unknown"):
        assert notices_for(other, {"account": 3}, WHEN) == []


def test_short_time_falls_back_on_unexpected_text():
    assert short_time(WHEN) == "2026-11-24 01:02 UTC"
    assert short_time("2026-11-24T01:07:00Z") == "2026-11-24 01:07 UTC", "auth_zkp.login.iso_utc's format"
    assert short_time("yesterday") == "yesterday"
    assert short_time(1_764_000_000) == "1764000000", "not text at all"
    assert short_time("2026-02-30T01:07:00Z") == "2026-02-30T01:07:00Z", "no such day"
    assert short_time("2026-11-24T01:07:00+02:00") == "2026-11-24T01:07:00+02:00", "not UTC"
    assert short_time("2026-11-24T01:07:00.1234567Z") == "2026-11-24T01:07:00.12345", "seven digits: cut to 25"


@given(
    account=st.integers(min_value=0, max_value=10**12),
    other=st.integers(min_value=0, max_value=10**12),
    amount=st.integers(min_value=1, max_value=100_000_000_000),
    balance=st.integers(min_value=0, max_value=10**15),
    event_type=st.sampled_from(sorted(NOTIFIED_TYPES)),
)
def test_every_message_fits_one_sms_segment_and_shows_no_full_account_number(account, other, amount, balance,
                                                                             event_type):
    data = {"account": account, "amount": amount, "balance_after": balance, "from": account, "to": other,
            "from_balance_after": balance, "to_balance_after": balance, "until": "2026-11-24T01:07:00.000000Z"}
    for notice in notices_for(event_type, data, WHEN):
        assert len(notice.body) <= MAX_SMS_CHARS
        assert notice.body.isascii()
        if notice.account >= 10**6:  # amounts may hold the same digits by chance (hypothesis found one): not them
            assert str(notice.account) not in re.sub(r"\d+\.\d\d\b", "<amount>", notice.body)


def test_directory_follows_opt_in_phone_changes_and_erasure(fake_redis, keys):
    bank = FakeBank(fake_redis, keys)
    with bank.batch():
        yes = bank.open(phone="+15550000001", sms=True)
        no = bank.open(phone="+15550000002", sms=False)
    directory = ContactDirectory(PersonalDataVault(fake_redis, keys=keys, master_key=bank.master_key))
    directory.catch_up(fake_redis, keys, 4)
    assert directory.phone_for(yes, LATER) == "+15550000001"
    assert directory.phone_for(no, LATER) is None
    assert directory.phone_for(999, LATER) is None
    bank.update(yes, phone="+15550000009")
    bank.update(no, sms=True)
    directory.catch_up(fake_redis, keys, 6)
    assert directory.phone_for(yes, LATER) == "+15550000009"
    assert directory.phone_for(no, LATER) == "+15550000002"
    assert directory.phone_for(no, 6) is None, "an opt-in (at seq 6) does not reach back to older events"
    bank.update(yes, sms=False)
    bank.close(no)
    directory.catch_up(fake_redis, keys, 8)
    assert directory.phone_for(yes, LATER) is None
    assert directory.phone_for(no, LATER) == "+15550000002", "a closed account still hears about its closure"
    bank.erase(no)
    directory.catch_up(fake_redis, keys, 9)
    assert directory.phone_for(no, LATER) is None
    assert directory.contact(no).phone_sealed is None and directory.contact(no).phone is None


def test_erased_data_key_alone_already_hides_the_number(fake_redis, keys):
    bank = FakeBank(fake_redis, keys)
    account = bank.open(sms=True)
    directory = ContactDirectory(PersonalDataVault(fake_redis, keys=keys, master_key=bank.master_key))
    directory.catch_up(fake_redis, keys, 2)
    bank.vault.destroy_data_key(account)  # shredded, CustomerDataErased not yet seen
    assert directory.phone_for(account, LATER) is None


def test_directory_refuses_a_gap_in_the_log(fake_redis, keys):
    directory = ContactDirectory(PersonalDataVault(fake_redis, keys=keys, master_key=os.urandom(32)))
    directory.apply_entries([(1, "MoneyDeposited", b"{}")])
    with pytest.raises(DirectoryGap):
        directory.apply_entries([(3, "MoneyDeposited", b"{}")])


def test_directory_takes_the_entries_the_notifier_reads_skipping_those_it_has(fake_redis, keys):
    bank = FakeBank(fake_redis, keys)
    with bank.batch():
        first = bank.open(phone="+15550000001", sms=True)
        second = bank.open(phone="+15550000002", sms=True)
        third = bank.open(phone="+15550000003", sms=True)
    entries = [(e.seq, e.type, e.body) for e in read_range(fake_redis, keys, 1)]
    assert len(entries) == 6
    directory = ContactDirectory(PersonalDataVault(fake_redis, keys=keys, master_key=bank.master_key))
    directory.apply_entries(entries[:2])
    assert directory.applied_seq == 2
    assert directory.phone_for(first, LATER) == "+15550000001" and directory.phone_for(third, LATER) is None
    fake_redis.delete(keys.events)  # from here only the entries given can teach it anything
    directory.apply_entries(entries)  # a notifier reading from a checkpoint behind the directory
    assert directory.applied_seq == 6 and directory.phone_for(third, LATER) == "+15550000003"
    directory.prefetch_phones([second, third, 999])
    assert directory.phone_for(second, LATER) == "+15550000002"


def _rest(status: int, code: int | None) -> TwilioRestException:
    return TwilioRestException(status, "https://api.twilio.com/x", "msg", code, "POST")


@pytest.mark.parametrize(
    ("error", "verdict", "code"),
    [
        (_rest(400, 21211), Verdict.PERMANENT, "21211"),
        (_rest(400, 21610), Verdict.PERMANENT, "21610"),
        (_rest(400, 21614), Verdict.PERMANENT, "21614"),
        (_rest(429, 20429), Verdict.TRANSIENT, "20429"),
        (_rest(500, 500), Verdict.TRANSIENT, "500"),
        (_rest(503, None), Verdict.TRANSIENT, "503"),
        (_rest(401, 20003), Verdict.FATAL, "20003"),
        (_rest(400, 21606), Verdict.FATAL, "21606"),
        (_rest(404, 20404), Verdict.FATAL, "20404"),
        (requests.exceptions.ReadTimeout("read timed out"), Verdict.TRANSIENT, "ReadTimeout"),
        (requests.exceptions.ConnectionError("refused"), Verdict.TRANSIENT, "ConnectionError"),
        (TimeoutError(), Verdict.TRANSIENT, "TimeoutError"),
    ],
)
def test_classification_table(error, verdict, code):
    failure = classify(error)
    assert (failure.verdict, failure.code) == (verdict, code)


def test_fatal_exit_codes_separate_authentication_from_configuration():
    assert fatal_exit_code(Failure(Verdict.FATAL, "20003", "")) == 4
    assert fatal_exit_code(Failure(Verdict.FATAL, "21606", "")) == 2


@given(attempt=st.integers(min_value=1, max_value=40), seed=st.integers(min_value=0, max_value=2**32))
def test_backoff_grows_exponentially_within_jitter_bounds_and_is_capped(attempt, seed):
    policy = RetryPolicy(base_s=0.5, cap_s=60.0, rng=random.Random(seed))
    ceiling = min(60.0, 0.5 * 2 ** (attempt - 1))
    assert ceiling / 2 <= policy.delay(attempt) <= ceiling


def test_backoff_jitter_spreads_peers_apart():
    policy = RetryPolicy(base_s=1.0, cap_s=600.0, rng=random.Random(7))
    assert len({round(policy.delay(6), 6) for _ in range(20)}) > 1


def _message(event_id: str = "e" * 32, account: int = 1) -> Message:
    return Message(event_id, account, 1, "MoneyDeposited", "1-0", "t", "+15550000001", "hi")


def test_ledger_lease_is_exclusive_and_final_states_win(any_redis, keys):
    ledger = Ledger(any_redis, keys=keys)
    sms = _message().sms_id
    assert ledger.lease(sms, "a") is None
    assert ledger.lease(sms, "b") is Status.BUSY
    assert ledger.lease(sms, "a") is None, "the same owner may retry"
    ledger.release(sms, "b")
    assert ledger.lease(sms, "b") is Status.BUSY, "only the holder releases"
    ledger.release(sms, "a")
    assert ledger.lease(sms, "b") is None
    ledger.record_sent({sms: "twilio:SM1"}, leases=[sms])
    assert not any_redis.exists(ledger.lease_key(sms)), "recording drops the lease"
    assert ledger.lease(sms, "a") is Status.DUPLICATE
    assert not any_redis.exists(ledger.lease_key(sms)), "a lease taken for a recorded message is given back"
    assert ledger.final([sms, _message(account=2).sms_id]) == {sms}
    assert any_redis.ttl(ledger.bucket(sms)) > 24 * 3600


def test_a_record_made_while_another_holds_the_lease_is_seen_by_the_next_taker(any_redis, keys):
    ledger = Ledger(any_redis, keys=keys)
    sms = _message().sms_id
    assert ledger.lease(sms, "a") is None
    ledger.record_sent({sms: "outbox"})  # an outbox notifier recorded it; a's lease then expired
    any_redis.delete(ledger.lease_key(sms))
    assert ledger.lease(sms, "b") is Status.DUPLICATE


def test_a_lease_that_expires_while_two_notifiers_want_it_goes_to_one(any_redis, keys, monkeypatch):
    ledger, rival = Ledger(any_redis, keys=keys), Ledger(any_redis, keys=keys)
    sms = _message().sms_id
    assert ledger.lease(sms, "b") is None

    def get_just_as_it_expires(key):
        any_redis.delete(key)  # b's lease expires as "a" looks at it ...
        assert rival.lease(sms, "c") is None  # ... and "c" takes it before "a" does
        return None  # what "a" saw

    monkeypatch.setattr(any_redis, "get", get_just_as_it_expires)
    assert ledger.lease(sms, "a") is Status.BUSY
    assert any_redis.execute_command("GET", ledger.lease_key(sms)) == b"sending:c"


def test_ledger_records_of_one_batch_share_a_hash_per_range_of_seqs(any_redis, keys):
    ledger = Ledger(any_redis, keys=keys)
    ids = [SmsId(seq, f"{seq:032x}", 7) for seq in (1, 2, LEDGER_BUCKET_EVENTS + 1)]
    ledger.record_sent({sms: "outbox" for sms in ids}, extra={keys.notifier_outbox_offset("x"): 42})
    assert {ledger.bucket(sms) for sms in ids} == {keys.sms_ledger(0), keys.sms_ledger(1)}
    assert any_redis.hlen(keys.sms_ledger(0)) == 2 and any_redis.hlen(keys.sms_ledger(1)) == 1
    (offset,), states = ledger.lookup([ids[2], SmsId(3, "f" * 32, 7), ids[0]],
                                      also_get=[keys.notifier_outbox_offset("x")])
    assert offset == b"42" and states == [b"sent:outbox", None, b"sent:outbox"]


def test_a_record_from_before_the_hashes_still_counts_as_final(any_redis, keys):
    ledger = Ledger(any_redis, keys=keys)
    sms = _message().sms_id
    any_redis.set(ledger.lease_key(sms), "sent:twilio:SM0", ex=3600)  # the old layout: one string per message
    assert ledger.lease(sms, "a") is Status.DUPLICATE


def test_ledger_dead_letter_keeps_no_phone_or_text(any_redis, keys):
    ledger = Ledger(any_redis, keys=keys)
    message = _message()
    ledger.record_dead(message, Failure(Verdict.PERMANENT, "21211", "HTTP 400 code 21211: invalid To"),
                       dead_stream=keys.dead("notifier"), attempts=1, consumer="n1")
    [(_id, fields)] = any_redis.xrange(keys.dead("notifier"))
    assert fields[b"code"] == b"21211" and fields[b"event_id"] == message.event_id.encode()
    assert not any(b"+1555" in value for value in fields.values())
    assert ledger.final([message.sms_id]) == {message.sms_id}
