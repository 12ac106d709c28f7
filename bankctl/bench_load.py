"""Load generators for ``bankctl bench``: client processes driving deposits, withdrawals and transfers.

Four shapes: ``sequential`` (one request in flight per client); ``batched`` (batch requests of
:data:`BATCH_COMMANDS` commands, one customer's each, ``window`` commands in flight per client); ``pipelined``
(a window of single-command requests per client); ``paced`` (an open-loop rate per client; latency is measured
from each request's *scheduled* send time, so a stall is not hidden by coordinated omission). ``queries`` is
``paced`` with read requests (``balance`` and ``history``) on ``{bank}:queries`` instead of commands.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing as mp
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import redis

from bankctl.bench_async import AsyncPool
from commands.client import MAX_REQUEST_STREAM_LEN, BankClient, Request, batch_request, batch_results, new_id
from eventstore.keys import Keys

OPEN_BATCH = 200
BATCH_COMMANDS = 250
OPEN_LOOP_CONNECTIONS = 64
PREPARE_S_PER_REQUEST = 0.0002  # generous: building a request takes about 60 us
PREPARE_S_PER_BATCHED_COMMAND = 0.00002  # generous: about 5 us per command of a batch request


@dataclass
class ClientStats:
    sent: int = 0
    ok: int = 0
    rejected: int = 0
    missing: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    deposited: int = 0
    withdrawn: int = 0
    transfers: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0


def fake_credential() -> dict[str, Any]:
    """A well-formed verifier nobody knows the password of (bench accounts never log in)."""
    return {"salt": secrets.token_hex(16), "kdf": {"algorithm": "argon2id", "memory_kib": 65536, "iterations": 2,
                                                    "lanes": 1}, "public_key": secrets.token_hex(32)}


def open_accounts(client: redis.Redis, keys: Keys, admin_session: str, count: int) -> list[int]:
    bank = BankClient(client, keys=keys, timeout_s=30)
    opened: list[int] = []
    for start in range(0, count, OPEN_BATCH):
        requests = []
        for i in range(start, min(count, start + OPEN_BATCH)):
            requests.append(Request("OpenAccount", {
                "type": "OpenAccount", "ssn": f"123-45-{1000 + i % 8999:04d}", "phone": f"+1555{i:07d}",
                "first_name": "Bench", "last_name": f"Customer{i}", "sms_opt_in": i % 2 == 0,
                "credential": fake_credential()}, session=admin_session))
        ids = bank.submit_many(keys.commands, requests)
        for reply in bank.wait_many(ids, timeout_s=30):
            if not reply or not reply.get("ok"):
                raise RuntimeError(f"could not open a bench account: {reply}")
            opened.append(int(reply["account"]))
    return opened


def _next_request(rng: random.Random, own: list[tuple[int, str]], everyone: list[int]) -> Request:
    account, token = own[rng.randrange(len(own))]
    roll = rng.random()
    if roll < 0.4:
        payload: dict[str, Any] = {"type": "Deposit", "account": account, "amount": rng.randint(100, 10_000)}
    elif roll < 0.7:
        payload = {"type": "Withdraw", "account": account, "amount": rng.randint(100, 5_000)}
    else:
        target = everyone[rng.randrange(len(everyone))]
        if target == account:
            target = everyone[(everyone.index(target) + 1) % len(everyone)]
        payload = {"type": "Transfer", "account": account, "to": target, "amount": rng.randint(100, 5_000)}
    return Request(payload["type"], payload, session=token)


def _next_query(rng: random.Random, own: list[tuple[int, str]]) -> Request:
    account, token = own[rng.randrange(len(own))]
    if rng.random() < 0.5:
        return Request("balance", {"account": account}, session=token)
    return Request("history", {"account": account, "limit": 10}, session=token)


def _tally(stats: ClientStats, request: Request, reply: dict[str, Any] | None) -> None:
    if reply is None:
        stats.missing += 1
        return
    if reply.get("ok"):
        stats.ok += 1
        if request.type in ("balance", "history"):
            return
        if request.type == "Deposit":
            stats.deposited += request.payload["amount"]
        elif request.type == "Withdraw":
            stats.withdrawn += request.payload["amount"]
        else:
            stats.transfers += 1
    else:
        stats.rejected += 1
        code = str(reply.get("code"))
        stats.errors[code] = stats.errors.get(code, 0) + 1


def run_client(socket_path: str, tag: str, own: list[tuple[int, str]], everyone: list[int], *, mode: str,
               operations: int, window: int, rate: float, seed: int, start_at: float) -> ClientStats:
    """One client's whole run (executed in its own process)."""
    keys = Keys(tag)
    client = redis.Redis(unix_socket_path=socket_path, socket_timeout=30)
    bank = BankClient(client, keys=keys, timeout_s=20)
    rng = random.Random(seed)  # noqa: S311 - workload shape, not security
    stats = ClientStats()
    open_loop = mode in ("paced", "queries")
    prepared = prepare_open_loop(keys, rng, own, everyone, queries=mode == "queries",
                                 operations=operations) if open_loop else []
    batches = prepare_batches(rng, own, everyone, operations=operations, window=window) if mode == "batched" else []
    gc.freeze()  # what was prepared lives until the end: out of the collector's walks while the run is timed
    while time.time() < start_at:
        time.sleep(0.001)
    began = time.perf_counter()
    if mode == "batched":
        _run_batches(stats, bank, keys, batches, window=window)
    elif mode == "pipelined":
        done = 0
        while done < operations:
            batch = [_next_request(rng, own, everyone) for _ in range(min(window, operations - done))]
            sent_at = time.perf_counter()
            ids = bank.submit_many(keys.commands, batch)
            replies = bank.wait_many(ids, timeout_s=20)
            took = (time.perf_counter() - sent_at) * 1000
            for request, reply in zip(batch, replies, strict=True):
                _tally(stats, request, reply)
            stats.latencies_ms.append(took)
            done += len(batch)
            stats.sent += len(batch)
    elif open_loop:
        _run_open_loop(stats, socket_path, prepared, interval=1.0 / rate if rate > 0 else 0.0)
    else:
        for _ in range(operations):
            request = _next_request(rng, own, everyone)
            scheduled = time.perf_counter()
            try:
                reply: dict[str, Any] | None = bank.command(request)
            except Exception:
                reply = None
            stats.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
            _tally(stats, request, reply)
            stats.sent += 1
    stats.elapsed_s = time.perf_counter() - began
    return stats


class PreparedBatch(NamedTuple):
    """One batch request, signed and laid out as its stream entry before the clock starts."""

    request_id: str
    fields: dict[bytes, bytes | str]
    commands: list[Request]


def batch_size(window: int) -> int:
    """Commands per batch request of a batched run with ``window`` commands in flight per client."""
    return min(BATCH_COMMANDS, max(1, window))


def prepare_batches(rng: random.Random, own: list[tuple[int, str]], everyone: list[int], *, operations: int,
                    window: int) -> list[PreparedBatch]:
    """Every batch request of a batched run (one customer's commands each), built before it starts, for the
    reason given in :func:`prepare_open_loop`: choosing, encoding and signing them took about a twentieth of
    the two cores during the run."""
    size = batch_size(window)
    out = []
    for done in range(0, operations, size):
        account, token = own[rng.randrange(len(own))]
        commands = [_next_request(rng, [(account, token)], everyone) for _ in range(min(size, operations - done))]
        request_id = new_id()
        out.append(PreparedBatch(request_id, batch_request(commands, session=token).fields(request_id), commands))
    return out


def _run_batches(stats: ClientStats, bank: BankClient, keys: Keys, batches: list[PreparedBatch], *,
                 window: int) -> None:
    """Send prepared batch requests with ``window`` commands in flight: a new batch goes out as soon as the oldest
    one is answered. Latency is per batch, from its send to its reply."""
    in_flight: deque[tuple[PreparedBatch, float]] = deque()
    depth = max(1, window // batch_size(window))
    waiting = deque(batches)
    while waiting or in_flight:
        while waiting and len(in_flight) < depth:
            batch = waiting.popleft()
            bank.client.xadd(keys.commands, batch.fields, maxlen=MAX_REQUEST_STREAM_LEN, approximate=True)
            in_flight.append((batch, time.perf_counter()))
        batch, sent_at = in_flight.popleft()
        [reply] = bank.wait_many([batch.request_id], timeout_s=20)
        stats.latencies_ms.append((time.perf_counter() - sent_at) * 1000)
        outcomes = batch_results(reply, len(batch.commands)) if reply is not None else [None] * len(batch.commands)
        for request, outcome in zip(batch.commands, outcomes, strict=True):
            _tally(stats, request, outcome)
        stats.sent += len(batch.commands)


def _run_open_loop(stats: ClientStats, socket_path: str, prepared: list[Prepared], *, interval: float) -> None:
    """Send on a fixed schedule whatever the replies do (open loop); latency counts from the scheduled time.

    One asyncio task per request on a pool of connections, so a slow reply delays no later request: the offered
    load is the configured rate, not what a closed loop would let through. (A pool of threads did the same at
    about twice the CPU per request, which on two cores took time from the bank being measured.)
    """
    # The generator's own cyclic-GC pauses would stall the sending loop and be counted as the bank's latency;
    # reference counting still frees everything here.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        asyncio.run(_send_scheduled(stats, socket_path, prepared, interval=interval))
    finally:
        if gc_was_enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class Prepared:
    """One open-loop request, signed and laid out as its XADD and BLPOP before the clock starts."""

    request: Request
    commands: tuple[tuple[Any, ...], tuple[Any, ...]]


def prepare_open_loop(keys: Keys, rng: random.Random, own: list[tuple[int, str]], everyone: list[int], *,
                      queries: bool, operations: int) -> list[Prepared]:
    """Every request of a paced run, built before it starts.

    Clients of a real bank run on their own machines; here they share the two cores with the bank, so the
    generator does its own work (choosing, encoding and signing requests: about 60 us each) before the measured
    window instead of during it. The signed send time is then up to a run's length old, well inside the
    server's request age limit.
    """
    stream = keys.queries if queries else keys.commands
    out = []
    for _ in range(operations):
        request = _next_query(rng, own) if queries else _next_request(rng, own, everyone)
        request_id = secrets.token_hex(16)
        fields = request.fields(request_id)
        out.append(Prepared(request, (("XADD", stream, "*", *(x for pair in fields.items() for x in pair)),
                                      ("BLPOP", keys.reply(request_id), 20))))
    return out


async def _send_scheduled(stats: ClientStats, socket_path: str, prepared: list[Prepared], *,
                          interval: float) -> None:
    # Beyond OPEN_LOOP_CONNECTIONS requests in flight a task waits for a connection, and that wait counts as
    # latency (a request is never dropped by the generator).
    pool = AsyncPool(socket_path, OPEN_LOOP_CONNECTIONS)
    pending: list[asyncio.Task[tuple[Request, dict[str, Any] | None, float]]] = []

    async def one(sent: Prepared, scheduled: float) -> tuple[Request, dict[str, Any] | None, float]:
        try:
            _entry_id, popped = await pool.execute(sent.commands)
            reply = orjson.loads(popped[1]) if popped else None
        except Exception as error:  # counted as missing, and named, so a generator fault is not blamed on the bank
            name = f"client:{type(error).__name__}"
            stats.errors[name] = stats.errors.get(name, 0) + 1
            reply = None
        return sent.request, reply, (time.perf_counter() - scheduled) * 1000

    try:
        await pool.open()
        began = time.perf_counter()
        for i, sent in enumerate(prepared):
            scheduled = began + i * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one(sent, scheduled)))
        for request, reply, latency_ms in await asyncio.gather(*pending):
            stats.latencies_ms.append(latency_ms)
            _tally(stats, request, reply)
            stats.sent += 1
    finally:
        await pool.close()


def _client_entry(queue: mp.Queue, *args: Any, **kwargs: Any) -> None:
    queue.put(run_client(*args, **kwargs))


def run_clients(
    socket_path: str, tag: str, sessions: dict[int, str], *, clients: int, mode: str, operations: int,
    window: int = 100, rate: float = 0.0, seed: int = 1,
) -> tuple[list[ClientStats], float]:
    """Run ``clients`` processes together; returns their stats and the wall time from common start to last end."""
    ctx = mp.get_context("fork")
    queue: mp.Queue = ctx.Queue()
    accounts = sorted(sessions)
    # open-loop clients build their requests before the common start (see prepare_open_loop)
    prepare_s = {"paced": PREPARE_S_PER_REQUEST, "queries": PREPARE_S_PER_REQUEST,
                 "batched": PREPARE_S_PER_BATCHED_COMMAND}.get(mode, 0.0)
    start_at = time.time() + 0.5 + prepare_s * operations / clients
    procs = []
    for c in range(clients):
        own = [(a, sessions[a]) for a in accounts[c::clients]] or [(accounts[0], sessions[accounts[0]])]
        proc = ctx.Process(target=_client_entry, args=(queue, socket_path, tag, own, accounts), kwargs={
            "mode": mode, "operations": operations // clients, "window": window, "rate": rate / clients,
            "seed": seed * 1000 + c, "start_at": start_at})
        proc.start()
        procs.append(proc)
    results = [queue.get(timeout=900) for _ in procs]
    wall = time.time() - start_at
    for proc in procs:
        proc.join(10)
    return results, wall


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]
