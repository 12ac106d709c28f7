"""The notifier runs under the embedded Redis's least-privilege ``notifier`` ACL user (bankctl.acl)."""

from __future__ import annotations

import os

import pytest
import redis
from helpers_notifier import FakeBank
from test_notifier_twilio import SID, TOKEN, ScriptedHttpClient, error

from bankctl.acl import credentials, write_acl_file
from bankctl.embedded_redis import start_redis
from eventstore.pii import PersonalDataVault
from eventstore.worker import WorkerRunner
from notifier.delivery import RetryPolicy
from notifier.senders import OutboxSender, TwilioSender
from notifier.status import notifier_status
from notifier.worker import Notifier


def test_outbox_and_twilio_paths_need_no_more_than_the_notifier_role(tmp_path, keys, needs_redis_server):
    data_dir = tmp_path / "data"
    acl = write_acl_file(data_dir, keys)
    server = start_redis(tmp_path / "redis", fsync="everysec", acl_file=acl,
                         wait_password=credentials(data_dir, "admin"))
    try:
        admin = server.client(username="admin", password=credentials(data_dir, "admin")[1])
        user, password = credentials(data_dir, "notifier")
        client = server.client(username=user, password=password)
        master_key = os.urandom(32)
        bank = FakeBank(admin, keys, master_key=master_key)
        with bank.batch():
            accounts = [bank.open(sms=True) for _ in range(3)]
            for account in accounts:
                bank.deposit(account, 100)
        vault = PersonalDataVault(client, keys=keys, master_key=master_key)
        outbox = OutboxSender(tmp_path / "outbox.jsonl")
        notifier = Notifier(client, keys=keys, vault=vault, sender=outbox, name="n1", block_ms=10)
        assert WorkerRunner(notifier, client=client, keys=keys, name="n1", burst=True).run() == 0
        assert notifier.counters["sent"] == 3
        notifier.stop()  # as the worker's main does: the checkpoint written, the lease handed back
        outbox.close()

        for account in accounts:
            bank.withdraw(account, 1)
        http = ScriptedHttpClient([error(503, None), error(400, 21211)])
        sender = TwilioSender(account_sid=SID, auth_token=TOKEN, from_number="+15005550006", owner="n2",
                              http_client=http)
        clock = [0.0]
        twilio = Notifier(client, keys=keys, vault=vault, sender=sender, name="n2", block_ms=None,
                          clock=lambda: clock[0], policy=RetryPolicy(base_s=1.0, cap_s=1.0))
        for _ in range(5):
            twilio.poll_once()
            clock[0] += 2.0
        assert twilio.counters["sent"] == 2 and twilio.counters["dead"] == 1 and twilio.counters["retries"] == 1
        status = notifier_status(admin, keys)
        assert status["dead_letters"] == 1 and status["lag"] == 0 and status["active"] == "n2"
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.xadd(keys.events, {"seq": "999", "type": "x", "body": "{}"})
    finally:
        server.kill()
