"""Poison messages XADDed straight into {bank}:commands are dead-lettered; the handler keeps serving (DESIGN §6).

Runs on fakeredis and on a real redis-server (the ``any_redis`` contract fixture).
"""

from __future__ import annotations

import orjson
import pytest

from commands.requests import MAX_PAYLOAD_BYTES
from tests.helpers_bank import drain, make_handler, open_accounts, session_for, submit, take_reply

GOOD = {"request_id": "r-good", "command_id": "c-good", "type": "Deposit"}

POISON = {
    "missing request_id": ({"command_id": "c1", "type": "Deposit", "payload": b"{}"}, None, "missing field request_id"),
    "missing payload": ({"request_id": "r2", "command_id": "c2", "type": "Deposit"}, "r2", "missing field payload"),
    "missing type": ({"request_id": "r3", "command_id": "c3", "payload": b"{}"}, "r3", "missing field type"),
    "unknown type": ({**GOOD, "request_id": "r4", "type": "Embezzle", "payload": b"{}"}, "r4", "unknown request type"),
    "wrong types": ({**GOOD, "request_id": "r5", "payload": b'{"account":"one","amount":1.5}'}, "r5",
                    "invalid Deposit"),
    "bool as int": ({**GOOD, "request_id": "r6", "payload": b'{"account":true,"amount":1}'}, "r6", "invalid Deposit"),
    "not an object": ({**GOOD, "request_id": "r7", "payload": b"[1,2]"}, "r7", "JSON object"),
    "invalid json": ({**GOOD, "request_id": "r8", "payload": b"{nope"}, "r8", "not valid UTF-8 JSON"),
    "invalid utf-8": ({**GOOD, "request_id": "r9", "payload": b'{"account":"\xff\xfe"}'}, "r9",
                      "not valid UTF-8 JSON"),
    "1 MB payload": ({**GOOD, "request_id": "r10", "payload": b'{"x":"' + b"a" * 1_000_000 + b'"}'}, "r10",
                     f"exceeds {MAX_PAYLOAD_BYTES}"),
    "bad request id": ({**GOOD, "request_id": "../../etc", "payload": b"{}"}, None, "request_id must be"),
    "binary command id": ({**GOOD, "request_id": "r12", "command_id": b"\xff\x00", "payload": b"{}"}, "r12",
                          "command_id must be"),
    "extra payload field": ({**GOOD, "request_id": "r13", "payload": b'{"account":1,"amount":1,"admin":true}'},
                            "r13", "invalid Deposit"),
    "type mismatch": ({**GOOD, "request_id": "r14", "payload": b'{"type":"Withdraw","account":1,"amount":1}'},
                      "r14", "differs"),
}


@pytest.mark.parametrize("case", sorted(POISON))
def test_poison_is_dead_lettered_with_reason_and_the_handler_keeps_serving(any_redis, keys, case):
    handler = make_handler(any_redis, keys)
    [account] = open_accounts(any_redis, keys, handler, 1)
    fields, reply_to, reason = POISON[case]
    any_redis.xadd(keys.commands, fields)
    good = submit(any_redis, keys, "Deposit", {"account": account, "amount": 100},
                  session_for(any_redis, keys, account))
    drain(handler)
    dead = any_redis.xrange(keys.dead("commands"))
    assert len(dead) == 1
    record = dead[0][1]
    assert reason in record[b"reason"].decode()
    assert record[b"origin_stream"] == keys.commands.encode()
    assert len(record.get(b"f:payload", b"")) <= 64 * 1024
    if reply_to is not None:
        reply = take_reply(any_redis, keys, reply_to)
        assert reply is not None and reply["ok"] is False and reply["code"] == "malformed_request"
    assert take_reply(any_redis, keys, good)["balance_cents"] == 100
    assert any_redis.xlen(keys.commands) == 0
    assert not any_redis.xpending(keys.commands, "handlers")["pending"]


def test_dead_letters_keep_no_personal_data_or_session(any_redis, keys):
    handler = make_handler(any_redis, keys)
    payload = {"ssn": "123-45-6789", "phone": "+15551234567", "first_name": "Zed", "last_name": "Secret",
               "credential": {"salt": "x"}, "bogus": 1}
    any_redis.xadd(keys.commands, {**GOOD, "type": "OpenAccount", "payload": orjson.dumps(payload),
                                   "session": "token-secret"})
    drain(handler)
    [(_id, record)] = any_redis.xrange(keys.dead("commands"))
    blob = repr(record).encode()
    for secret in (b"123-45-6789", b"+15551234567", b"Zed", b"Secret", b"token-secret"):
        assert secret not in blob
    assert orjson.loads(record[b"f:payload"])["bogus"] == 1


def test_an_entry_delivered_too_often_is_dead_lettered(any_redis, keys):
    handler = make_handler(any_redis, keys, max_deliveries=3, failover_ms=1000)
    [account] = open_accounts(any_redis, keys, handler, 1)
    request_id = submit(any_redis, keys, "Deposit", {"account": account, "amount": 5},
                        session_for(any_redis, keys, account))
    handler.group.ensure()
    crashing = make_handler(any_redis, keys, name="crashing").group
    [(entry_id, _fields)] = crashing.read_new(count=10, block_ms=None)
    for _ in range(3):  # three more failed deliveries, each backdated past the failover threshold
        any_redis.xclaim(keys.commands, "handlers", "crashing", 0, [entry_id], idle=60_000)
    handler._last_claim = 0.0  # due for its periodic XAUTOCLAIM
    assert handler.poll_once(block_ms=None) == 1
    [(_id, record)] = any_redis.xrange(keys.dead("commands"))
    assert b"delivered" in record[b"reason"]
    assert take_reply(any_redis, keys, request_id) is None
    assert not any_redis.xpending(keys.commands, "handlers")["pending"]
