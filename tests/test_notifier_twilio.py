"""The Twilio path through the real SDK (``twilio.rest.Client``) with an injected HTTP client.

Every request the SDK makes lands in :class:`ScriptedHttpClient`, which answers with scripted
``twilio.http.response.Response`` objects or raises the errors ``requests`` raises on timeouts and refused
connections, so what is asserted is exactly what would go over the wire.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable

import pytest
import requests
from helpers_notifier import FakeBank
from twilio.http import HttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response

from eventstore.log import last_seq
from eventstore.worker import FatalWorkerError, WorkerRunner
from notifier.delivery import RetryPolicy
from notifier.senders import OutboxSender, SenderNotConfigured, TwilioSender, sender_from_env
from notifier.status import notifier_status
from notifier.worker import Notifier

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "test-auth-token"
FROM = "+15005550006"
URL = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"


def created(n: int = 1) -> Response:
    return Response(201, json.dumps({"sid": f"SM{n:032d}", "status": "queued", "to": "x", "from": FROM}))


def error(status: int, code: int | None, message: str = "error") -> Response:
    if code is None:
        return Response(status, "<html>Internal Server Error</html>")
    return Response(status, json.dumps({"code": code, "message": message, "status": status,
                                        "more_info": f"https://www.twilio.com/docs/errors/{code}"}))


class ScriptedHttpClient(HttpClient):
    """Records each request; answers from a script (a Response, or an exception to raise)."""

    def __init__(self, script: Iterable[Response | Exception]) -> None:
        super().__init__(logging.getLogger("test.twilio"), is_async=False, timeout=3.0)
        self.script = list(script)
        self.requests: list[dict[str, object]] = []

    def request(self, method, uri, params=None, data=None, headers=None, auth=None, timeout=None,
                allow_redirects=False):
        self.requests.append({"method": method, "url": uri, "data": dict(data or {}), "auth": auth,
                              "params": params})
        answer = self.script.pop(0) if self.script else created(len(self.requests))
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(fake_redis, keys, script, *, name="n1", max_attempts=3, bank=None):
    bank = bank or FakeBank(fake_redis, keys)
    http = ScriptedHttpClient(script)
    sender = TwilioSender(account_sid=SID, auth_token=TOKEN, from_number=FROM, owner=name, http_client=http)
    clock = Clock()
    notifier = Notifier(fake_redis, keys=keys, vault=bank.vault, sender=sender, name=name, block_ms=None,
                        clock=clock, policy=RetryPolicy(max_attempts=max_attempts, base_s=1.0, cap_s=8.0,
                                                        rng=random.Random(1)))
    return bank, http, notifier, clock


def unsettled(client, keys) -> int:
    """Events after the notifier's checkpoint: a restart or a successor reads them again."""
    return notifier_status(client, keys)["lag"]


def dead(client, keys):
    return [fields for _id, fields in client.xrange(keys.dead("notifier"))]


def drain(notifier: Notifier, rounds: int = 10) -> None:
    for _ in range(rounds):
        if notifier.poll_once() == 0:
            return


def test_request_is_exactly_what_twilio_expects(fake_redis, keys):
    bank, http, notifier, _ = make(fake_redis, keys, [])
    account = bank.open(phone="+15551230042", sms=True)
    bank.deposit(account, 1230)
    drain(notifier)
    [request] = http.requests
    assert request["method"] == "POST"
    assert request["url"] == URL
    assert request["auth"] == (SID, TOKEN)
    assert request["data"] == {
        "To": "+15551230042", "From": FROM,
        "Body": request["data"]["Body"],
    }
    assert request["data"]["Body"].startswith("Fintech Fortress: Deposit of 12.30 on account ****0001. Balance 12.30.")
    assert unsettled(fake_redis, keys) == 0
    [event_id] = [e for e, t, _a in bank.event_ids if t == "MoneyDeposited"]
    assert fake_redis.hget("{bank}:sms:ledger:0", f"{event_id}:{account}") == b"sent:twilio:SM" + b"0" * 31 + b"1"
    assert not fake_redis.exists(f"{{bank}}:sms:{event_id}:{account}"), "the lease is gone once the send is recorded"


def test_default_http_client_has_an_explicit_timeout():
    sender = TwilioSender(account_sid=SID, auth_token=TOKEN, from_number=FROM, owner="n1")
    assert isinstance(sender.http_client, TwilioHttpClient)
    assert sender.http_client.timeout == 5.0
    assert sender.client.http_client is sender.http_client


def test_invalid_number_21211_is_dead_lettered_at_once_with_its_code(fake_redis, keys):
    bank, http, notifier, clock = make(fake_redis, keys,
                                       [error(400, 21211, "The 'To' number +15550000001 is not a valid phone number.")])
    account = bank.open(sms=True)
    bank.deposit(account, 100)
    drain(notifier)
    clock.now += 3600
    drain(notifier)
    assert len(http.requests) == 1, "a permanent error is not retried"
    [letter] = dead(fake_redis, keys)
    assert letter[b"code"] == b"21211" and letter[b"verdict"] == b"permanent"
    assert letter[b"account"] == str(account).encode() and letter[b"attempts"] == b"1"
    assert b"5550000001" not in letter[b"reason"] and b"[number]" in letter[b"reason"], "no phone in dead letters"
    assert unsettled(fake_redis, keys) == 0
    assert notifier.counters["dead"] == 1 and notifier.counters["sent"] == 0


def test_429_is_retried_after_a_backoff_then_sent(fake_redis, keys):
    bank, http, notifier, clock = make(fake_redis, keys, [error(429, 20429, "Too Many Requests")])
    account = bank.open(sms=True)
    bank.deposit(account, 100)
    drain(notifier)
    assert len(http.requests) == 1 and unsettled(fake_redis, keys) == 1 and notifier.waiting == 1
    drain(notifier)
    assert len(http.requests) == 1, "not before the backoff has passed"
    clock.now += 1.0
    drain(notifier)
    assert len(http.requests) == 2
    assert unsettled(fake_redis, keys) == 0 and notifier.counters["sent"] == 1 and dead(fake_redis, keys) == []


def test_500_every_time_is_dead_lettered_after_the_bounded_attempts(fake_redis, keys):
    bank, http, notifier, clock = make(fake_redis, keys, [error(500, None)] * 10, max_attempts=3)
    account = bank.open(sms=True)
    bank.deposit(account, 100)
    for _ in range(10):
        drain(notifier)
        clock.now += 10.0
    assert len(http.requests) == 3
    [letter] = dead(fake_redis, keys)
    assert letter[b"verdict"] == b"transient" and letter[b"code"] == b"500"
    assert b"gave up after 3 attempts" in letter[b"reason"]
    assert unsettled(fake_redis, keys) == 0


@pytest.mark.parametrize("failure", [requests.exceptions.ReadTimeout("read timed out (5.0 s)"),
                                     requests.exceptions.ConnectTimeout("connect timed out"),
                                     requests.exceptions.ConnectionError("connection refused")])
def test_timeouts_and_connection_errors_are_retried(fake_redis, keys, failure):
    bank, http, notifier, clock = make(fake_redis, keys, [failure, failure])
    account = bank.open(sms=True)
    bank.deposit(account, 100)
    for _ in range(4):
        drain(notifier)
        clock.now += 10.0
    assert len(http.requests) == 3
    assert notifier.counters["retries"] == 2 and notifier.counters["sent"] == 1
    assert unsettled(fake_redis, keys) == 0 and dead(fake_redis, keys) == []


def test_transient_failure_stops_the_batch_but_a_bad_number_does_not(fake_redis, keys):
    bank, http, notifier, clock = make(fake_redis, keys, [error(400, 21614), created(2), error(503, None)])
    with bank.batch():
        accounts = [bank.open(sms=True) for _ in range(4)]
        for account in accounts:
            bank.deposit(account, 100)
    drain(notifier, rounds=1)
    assert len(http.requests) == 3, "21614 skipped, one sent, 503 stopped the batch before the fourth"
    assert notifier.waiting == 2
    clock.now += 10.0
    drain(notifier)
    assert len(http.requests) == 5 and notifier.counters["sent"] == 3 and unsettled(fake_redis, keys) == 0


@pytest.mark.parametrize(("answer", "exit_code"), [(error(401, 20003, "Authenticate"), 4),
                                                    (error(400, 21606, "The From phone number is not valid"), 2)])
def test_auth_or_sender_errors_stop_the_worker_and_leave_the_event_unsettled(fake_redis, keys, answer,
                                                                                  exit_code):
    bank, http, notifier, _ = make(fake_redis, keys, [answer])
    account = bank.open(sms=True)
    bank.deposit(account, 100)
    with pytest.raises(FatalWorkerError) as caught:
        drain(notifier)
    assert caught.value.exit_code == exit_code
    assert "TWILIO_" in str(caught.value)
    assert unsettled(fake_redis, keys) == 1
    assert dead(fake_redis, keys) == []
    # After the fix a fresh process (same name, so it holds the lease at once) sends it once.
    _, http2, fixed, _ = make(fake_redis, keys, [], bank=bank)
    drain(fixed)
    assert len(http2.requests) == 1 and unsettled(fake_redis, keys) == 0


def test_runner_exits_with_the_code_on_auth_failure(fake_redis, keys):
    bank, _http, notifier, _ = make(fake_redis, keys, [error(401, 20003, "Authenticate")])
    bank.deposit(bank.open(sms=True), 100)
    runner = WorkerRunner(notifier, client=fake_redis, keys=keys, name="n1", burst=True)
    assert runner.run() == 4
    assert unsettled(fake_redis, keys) == 1


def test_redelivered_event_is_not_sent_twice_once_the_send_succeeded(fake_redis, keys):
    bank, http, crashing, _ = make(fake_redis, keys, [])
    crashing._save = lambda *a, **k: None  # dies after sending and recording, before writing its checkpoint
    account = bank.open(sms=True)
    bank.deposit(account, 100)
    drain(crashing)
    assert len(http.requests) == 1 and unsettled(fake_redis, keys) == 3, "open, credentials, deposit"
    _, http2, restarted, _ = make(fake_redis, keys, [], bank=bank)
    drain(restarted)
    assert http2.requests == [] and restarted.counters["duplicates"] == 1
    assert unsettled(fake_redis, keys) == 0


def test_a_peer_holding_the_sending_lease_is_not_doubled(fake_redis, keys):
    bank, http, notifier, clock = make(fake_redis, keys, [])
    account = bank.open(sms=True)
    bank.deposit(account, 100)
    [event_id] = [e for e, t, _a in bank.event_ids if t == "MoneyDeposited"]
    key = f"{{bank}}:sms:{event_id}:{account}"
    fake_redis.set(key, b"sending:other-notifier", ex=60)
    drain(notifier)
    assert http.requests == [] and unsettled(fake_redis, keys) == 1
    fake_redis.delete(key)  # the peer's lease ended without a send
    clock.now += 10.0
    drain(notifier)
    assert len(http.requests) == 1 and unsettled(fake_redis, keys) == 0


def test_env_selects_twilio_outbox_or_refuses_half_a_setup(tmp_path):
    full = {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_FROM_NUMBER": FROM}
    twilio = sender_from_env(full, data_dir=tmp_path, owner="n1")
    assert isinstance(twilio, TwilioSender) and twilio.from_number == FROM
    outbox = sender_from_env({}, data_dir=tmp_path, owner="n1")
    assert isinstance(outbox, OutboxSender) and outbox.path == tmp_path / "outbox.jsonl"
    outbox.close()
    with pytest.raises(SenderNotConfigured, match="TWILIO_FROM_NUMBER"):
        sender_from_env({k: v for k, v in full.items() if k != "TWILIO_FROM_NUMBER"}, data_dir=tmp_path,
                        owner="n1")


def test_waiting_messages_are_bounded_and_new_events_stay_in_redis(fake_redis, keys):
    bank, http, notifier, clock = make(fake_redis, keys, [error(503, None)] * 100, max_attempts=50)
    notifier.max_waiting = 2
    notifier.read_count = 2
    with bank.batch():
        accounts = [bank.open(sms=True) for _ in range(5)]
        for account in accounts:
            bank.deposit(account, 100)
    for _ in range(30):
        notifier.poll_once()
    assert notifier.waiting <= 2
    assert notifier.counters["events"] < last_seq(fake_redis, keys), "events beyond the bound were never read"
    unread = last_seq(fake_redis, keys) - notifier.counters["events"]
    assert unsettled(fake_redis, keys) > unread, "the waiting messages hold the checkpoint back"
