"""audit verify: an untouched log verifies; tampering through raw Redis is reported with its seq."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers_events import EventFactory

from bankctl.audit import export_log, verify_export, verify_redis
from bankctl.cli import cli
from eventstore.sealer import Sealer
from eventstore.seals import create_signing_key, load_signing_key
from projections.rebuild import rebuild


def _bank(client, keys, *, commands=300):
    factory = EventFactory(client, keys)
    factory.open_admin()
    accounts = factory.open_accounts(8)
    factory.random_traffic(accounts, commands, seed=3)
    factory.withdraw(accounts[0], factory.states[accounts[0]].balance) if factory.states[accounts[0]].balance else None
    factory.close(accounts[0])
    factory.erase(accounts[0])
    return factory


def _seal_all(client, keys, key, every=40):
    sealer = Sealer(client, keys=keys, private_key=key, block_ms=None, every_events=every, every_s=3600)
    while sealer.poll_once():
        pass
    sealer.seal()


def _entries(client, keys):
    return client.xrange(keys.events, "-", "+")


def _rewrite(client, keys, entries):
    """Recreate the stream with the given entries and ids (what an attacker with raw Redis access can do)."""
    client.delete(keys.events)
    for entry_id, fields in entries:
        client.xadd(keys.events, fields, id=entry_id)


def _checks(report):
    return {(f.check, f.seq) for f in report.findings}


@pytest.fixture(params=["chain-in-process", "chain-in-child"])
def sealed_bank(request, real_redis, keys, monkeypatch):
    """Every tamper test runs twice: the hash chain checked alongside the replay, and in a forked child."""
    monkeypatch.setattr("bankctl.audit.CHILD_MIN_EVENTS", 0 if request.param == "chain-in-child" else 10**9)
    factory = _bank(real_redis, keys)
    key = Ed25519PrivateKey.generate()
    _seal_all(real_redis, keys, key)
    return factory, key


def test_untouched_log_verifies(sealed_bank, real_redis, keys, tmp_path):
    factory, key = sealed_bank
    rebuild(real_redis, keys, factory.vault, tmp_path / "database1.db")
    rebuild(real_redis, keys, factory.vault, tmp_path / "database2.db")
    report = verify_redis(real_redis, keys, public_key=key.public_key(),
                          databases={"database1": tmp_path / "database1.db", "database2": tmp_path / "database2.db"},
                          require_databases=True)
    assert report.ok, report.render()
    assert report.events == factory.last_seq and report.sealed_seq == factory.last_seq
    assert report.databases["database1"]["compared_at"] == factory.last_seq
    assert report.total_balance == sum(s.balance for s in factory.states.values())


def test_changed_field_of_one_event_is_pinpointed(sealed_bank, real_redis, keys):
    _factory, key = sealed_bank
    entries = _entries(real_redis, keys)
    victim = 57
    entry_id, fields = entries[victim - 1]
    body = orjson.loads(fields[b"body"])
    body["occurred_at"] = "2020-01-01T00:00:00.000000Z"  # changes nothing but the bytes
    entries[victim - 1] = (entry_id, {**fields, b"body": orjson.dumps(body, option=orjson.OPT_SORT_KEYS)})
    _rewrite(real_redis, keys, entries)
    report = verify_redis(real_redis, keys, public_key=key.public_key())
    assert not report.ok
    assert ("chain", victim) in _checks(report), report.render()


def test_a_re_encoded_body_is_reported_as_not_canonical(sealed_bank, real_redis, keys):
    _factory, key = sealed_bank
    entries = _entries(real_redis, keys)
    victim = 41
    entry_id, fields = entries[victim - 1]
    same_content = orjson.dumps(orjson.loads(fields[b"body"]), option=orjson.OPT_INDENT_2)  # other bytes, same JSON
    entries[victim - 1] = (entry_id, {**fields, b"body": same_content})
    _rewrite(real_redis, keys, entries)
    report = verify_redis(real_redis, keys, public_key=key.public_key())
    assert _checks(report) == {("envelope", victim), ("chain", victim)}, report.render()
    assert [f.message for f in report.findings if f.check == "envelope"] == [
        "body is not in canonical form (re-encoded or edited)"]


def test_changed_amount_is_reported_at_its_seq(sealed_bank, real_redis, keys):
    _factory, key = sealed_bank
    entries = _entries(real_redis, keys)
    index = next(i for i, (_id, f) in enumerate(entries) if f[b"type"] == b"MoneyDeposited" and i > 30)
    entry_id, fields = entries[index]
    body = orjson.loads(fields[b"body"])
    body["data"]["amount"] += 100_00
    entries[index] = (entry_id, {**fields, b"body": orjson.dumps(body, option=orjson.OPT_SORT_KEYS)})
    _rewrite(real_redis, keys, entries)
    report = verify_redis(real_redis, keys, public_key=key.public_key())
    seq = index + 1
    assert ("chain", seq) in _checks(report) and ("invariant", seq) in _checks(report), report.render()


def test_deleted_event_is_reported(sealed_bank, real_redis, keys):
    _factory, key = sealed_bank
    real_redis.xdel(keys.events, "100-0")
    report = verify_redis(real_redis, keys, public_key=key.public_key())
    assert ("gap", 100) in _checks(report), report.render()
    assert ("chain", 100) in _checks(report)


def test_forged_event_at_the_end_is_reported(sealed_bank, real_redis, keys):
    factory, key = sealed_bank
    head = factory.last_seq
    deposit = next(f for _id, f in reversed(_entries(real_redis, keys)) if f[b"type"] == b"MoneyDeposited")
    body = orjson.loads(deposit[b"body"])
    body.update(seq=head + 1, event_id="f" * 32, command_id="forged", correlation_id="forged",
                causation_id="forged")
    body["versions"] = [v + 1 for v in body["versions"]]
    real_redis.xadd(keys.events, {"seq": head + 1, "type": "MoneyDeposited",
                                  "body": orjson.dumps(body, option=orjson.OPT_SORT_KEYS)}, id=f"{head + 1}-0")
    report = verify_redis(real_redis, keys, public_key=key.public_key())
    seqs = {seq for _check, seq in _checks(report)}
    assert head + 1 in seqs, report.render()
    assert any("not sealed" in w for w in report.warnings)


def test_forged_event_with_bumped_counter_and_state_is_still_caught(sealed_bank, real_redis, keys):
    factory, key = sealed_bank
    head = factory.last_seq
    real_redis.xadd(keys.events, {"seq": head + 1, "type": "MoneyDeposited", "body": b"{}"}, id=f"{head + 1}-0")
    real_redis.incr(keys.seq)
    report = verify_redis(real_redis, keys, public_key=key.public_key())
    assert ("envelope", head + 1) in _checks(report), report.render()


def test_reordered_event_is_reported(sealed_bank, real_redis, keys):
    factory, key = sealed_bank
    head = factory.last_seq
    [(entry_id, fields)] = real_redis.xrange(keys.events, "80-0", "80-0")
    real_redis.xdel(keys.events, entry_id)
    real_redis.xadd(keys.events, fields, id=f"{head + 1}-0")
    report = verify_redis(real_redis, keys, public_key=key.public_key())
    checks = _checks(report)
    assert ("gap", 80) in checks and ("entry", 80) in checks and ("order", 80) in checks, report.render()


def test_truncated_log_and_forged_seal_are_reported(sealed_bank, real_redis, keys):
    factory, key = sealed_bank
    head = factory.last_seq
    real_redis.xdel(keys.events, f"{head}-0")
    report = verify_redis(real_redis, keys, public_key=key.public_key())
    assert ("truncated", head) in _checks(report) or ("head", head) in _checks(report), report.render()
    other = Ed25519PrivateKey.generate()
    report = verify_redis(real_redis, keys, public_key=other.public_key())
    assert any(f.check == "seal" for f in report.findings)


def test_write_side_and_database_disagreement_is_reported(sealed_bank, real_redis, keys, tmp_path):
    factory, key = sealed_bank
    rebuild(real_redis, keys, factory.vault, tmp_path / "database1.db")
    import sqlite3

    conn = sqlite3.connect(tmp_path / "database1.db")
    conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 3")
    conn.commit()
    conn.close()
    real_redis.hset(keys.account(4), "balance", 1)
    report = verify_redis(real_redis, keys, public_key=key.public_key(),
                          databases={"database1": tmp_path / "database1.db"})
    checks = {f.check for f in report.findings}
    assert {"write-side", "database"} <= checks, report.render()
    assert all(f.seq for f in report.findings if f.check in ("write-side", "database"))


def test_a_planted_account_hash_is_found_in_the_issued_ids_or_with_a_keyspace_scan(sealed_bank, real_redis, keys):
    factory, key = sealed_bank
    newest = factory.next_account - 1
    real_redis.set(keys.account_ids, newest + 10)  # ids handed out to opens that were then refused: gaps
    assert verify_redis(real_redis, keys, public_key=key.public_key()).ok
    gap, above = newest + 5, newest + 50

    def planted(report):
        return [f.message for f in report.findings if f.check == "write-side" and f.seq is None]

    real_redis.hset(keys.account(above), mapping={"version": 1, "balance": 10_000_00, "status": "open"})
    assert planted(verify_redis(real_redis, keys, public_key=key.public_key())) == []  # only a scan looks there
    assert planted(verify_redis(real_redis, keys, public_key=key.public_key(), scan_keyspace=True)) == [
        f"write side has account {above}, which the log never opened"]
    real_redis.delete(keys.account(above))
    real_redis.hset(keys.account(gap), mapping={"version": 1, "balance": 5_00, "status": "open"})
    assert planted(verify_redis(real_redis, keys, public_key=key.public_key())) == [
        f"write side has account {gap}, which the log never opened"]


def test_missing_database_is_a_warning_or_with_the_flag_a_finding(sealed_bank, real_redis, keys, tmp_path):
    _factory, key = sealed_bank
    dbs = {"database1": tmp_path / "nope.db"}
    assert verify_redis(real_redis, keys, public_key=key.public_key(), databases=dbs).ok
    assert not verify_redis(real_redis, keys, public_key=key.public_key(), databases=dbs,
                            require_databases=True).ok


def test_export_verifies_offline_and_detects_an_edited_file(sealed_bank, real_redis, keys, tmp_path):
    factory, key = sealed_bank
    out = tmp_path / "audit.jsonl"
    with open(out, "wb") as handle:
        counts = export_log(real_redis, keys, handle, public_key=key.public_key(), exported_at="now")
    assert counts["events"] == factory.last_seq
    real_redis.flushall()  # offline: no Redis involved from here
    assert verify_export(out, public_key=key.public_key()).ok
    lines = out.read_bytes().splitlines()
    record = orjson.loads(lines[42])
    assert record["kind"] == "event"
    body = orjson.loads(record["body"])
    body["actor"] = "customer:999"
    record["body"] = orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()
    lines[42] = orjson.dumps(record)
    out.write_bytes(b"\n".join(lines) + b"\n")
    report = verify_export(out, public_key=key.public_key())
    assert ("chain", int(record["seq"])) in _checks(report), report.render()


def test_cli_verify_and_export(real_redis, redis_server, keys, tmp_path):
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    create_signing_key(data_dir / "signing.key")
    _bank(real_redis, keys, commands=60)
    _seal_all(real_redis, keys, load_signing_key(data_dir / "signing.key"))
    runner = CliRunner()
    base = ["--data-dir", str(data_dir), "--redis-url", redis_server.url]
    result = runner.invoke(cli, [*base, "audit", "verify", "--json"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["ok"] is True
    result = runner.invoke(cli, [*base, "audit", "export", "--out", str(tmp_path / "x.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    real_redis.hset(keys.account(999), mapping={"version": 1, "balance": 1, "status": "open"})
    assert runner.invoke(cli, [*base, "audit", "verify"]).exit_code == 0
    result = runner.invoke(cli, [*base, "audit", "verify", "--scan-keyspace"])
    assert result.exit_code == 1 and "account 999, which the log never opened" in result.stdout
    real_redis.delete(keys.account(999))
    real_redis.xdel(keys.events, "20-0")
    result = runner.invoke(cli, [*base, "audit", "verify"])
    assert result.exit_code == 1 and "seq 20" in result.stdout
    result = runner.invoke(cli, [*base, "audit", "verify", "--from-file", str(tmp_path / "x.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
