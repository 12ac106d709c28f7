"""The auditor's hash-chain check: recompute the running SHA-256 chain over the log and hold it against every seal.

It needs only each entry's seq and body bytes, no replay state, so on a big log it runs in a forked child
process that reads the log by itself while the parent replays: hashing is a fifth of the audit's work, and the
second core is otherwise idle. On a small log (or a plain iterable of entries) it runs alongside the replay in
the same process. Either way the findings are the same: a seal whose chain differs names the events that were
altered, are missing, or sit where they were not sealed (from the seal's leaves); a seal beyond the end of the
log is a truncation.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson

from eventstore.seals import GENESIS, LEAF_BYTES, Seal

RawEntry = tuple[str, bytes, bytes, bytes]
"""``(stream id, seq field, type field, body)`` exactly as stored."""

ChainFinding = tuple[str, int | None, str]
"""``(check, seq, message)``: turned into the report's findings by the auditor."""

NOT_CANONICAL = "body is not in canonical form (re-encoded or edited)"

CHILD_MIN_EVENTS = 50_000
"""Below this many events the chain is checked in-process (a fork costs more than it saves)."""


class ChainCheckFailed(RuntimeError):
    """The child process checking the chain died or could not read the log."""


class ChainCheck:
    """The chain over the entries fed so far, checked against ``seals`` (sorted by seq) as it reaches them."""

    __slots__ = ("seals", "chain", "window", "seal_index", "head", "findings")

    def __init__(self, seals: Sequence[Seal]) -> None:
        self.seals = list(seals)
        self.chain = GENESIS
        self.window: dict[int, bytes] = {}  # leaf of every seq since the last seal, to locate a mismatch
        self.seal_index = 0
        self.head = 0
        self.findings: list[ChainFinding] = []

    def feed(self, entries: Iterable[RawEntry], *, check_canonical: bool = False) -> None:
        """Hash every entry; ``check_canonical`` also compares each JSON body with its canonical encoding (the
        child does, so that the replaying parent need not re-encode; a body that is not JSON is the parent's)."""
        if not check_canonical:
            for _ in self.follow(entries):
                pass
            return
        loads, dumps, sort_keys = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS
        findings = self.findings
        for entry in self.follow(entries):
            body = entry[3]
            try:
                canonical = dumps(loads(body), option=sort_keys) == body
            except orjson.JSONDecodeError:
                continue
            if not canonical:
                try:
                    findings.append(("envelope", int(entry[1]), NOT_CANONICAL))
                except ValueError:  # the parent reports the entry and skips it
                    continue

    def follow(self, entries: Iterable[RawEntry]) -> Iterator[RawEntry]:
        """Hash each entry into the chain, then hand it on (so a replay can run over the same pass)."""
        sha256 = hashlib.sha256
        leaf_bytes = LEAF_BYTES
        never = float("inf")
        seals = self.seals
        chain, window, head = self.chain, self.window, self.head
        next_seal = seals[self.seal_index].seq if self.seal_index < len(seals) else never
        for entry in entries:
            try:
                seq = int(entry[1])
            except ValueError:  # the replay reports a non-numeric seq
                yield entry
                continue
            if seq > next_seal:  # seals whose last event is missing are checked before this entry joins
                self.chain, self.window = chain, window
                while self.seal_index < len(seals) and seals[self.seal_index].seq < seq:
                    self._check_seal(seals[self.seal_index])
                chain, window = self.chain, self.window
                next_seal = seals[self.seal_index].seq if self.seal_index < len(seals) else never
            event_digest = sha256(entry[3]).digest()
            chain = sha256(chain + event_digest).digest()
            window[seq] = event_digest[:leaf_bytes]
            if seq == next_seal:
                self.chain, self.window = chain, window
                self._check_seal(seals[self.seal_index])
                chain, window = self.chain, self.window
                next_seal = seals[self.seal_index].seq if self.seal_index < len(seals) else never
            if seq > head:
                head = seq
            yield entry
        self.chain, self.window, self.head = chain, window, head

    def finish(self) -> None:
        """Check the seals the log did not reach: beyond its end (truncated) or ending on a missing event."""
        while self.seal_index < len(self.seals):
            seal = self.seals[self.seal_index]
            if seal.seq > self.head:
                self.findings.append(("truncated", seal.seq,
                                      f"a seal covers seq {seal.seq} but the log ends at {self.head}"))
                self.seal_index += 1
            else:
                self._check_seal(seal)

    def _check_seal(self, seal: Seal) -> None:
        self.seal_index += 1
        if self.chain.hex() == seal.chain:
            self.window = {}
            return
        located = []
        if len(seal.leaves) == LEAF_BYTES * (seal.seq - seal.first_seq + 1):
            for offset, seq in enumerate(range(seal.first_seq, seal.seq + 1)):
                leaf = seal.leaves[offset * LEAF_BYTES:(offset + 1) * LEAF_BYTES]
                ours = self.window.get(seq)
                if ours is None:
                    located.append((seq, "is missing"))
                elif ours != leaf:
                    located.append((seq, "was altered"))
            extra = [s for s in self.window if s < seal.first_seq or s > seal.seq]
            located += [(s, "is not where it was sealed (moved or forged)") for s in sorted(extra)]
        if located:
            for seq, what in located[:10]:
                self.findings.append(("chain", seq, f"event {seq} {what} (compared with the seal at seq {seal.seq})"))
        else:
            self.findings.append(("chain", seal.seq, f"chain differs from the seal at seq {seal.seq} (events "
                                                     f"{seal.first_seq}..{seal.seq})"))
        # Continue from the signed chain so later, independent tampering is found as well.
        self.chain = bytes.fromhex(seal.chain)
        self.window = {}

    def state(self) -> tuple[Any, ...]:
        """What a child hands back (the seals, with their leaves, stay on the parent's side)."""
        return self.chain, self.window, self.seal_index, self.head, self.findings

    def restore(self, state: tuple[Any, ...]) -> None:
        self.chain, self.window, self.seal_index, self.head, self.findings = state


def _check_in_child(check: ChainCheck, source: Callable[[], Iterable[RawEntry]], send: Any) -> None:
    gc.disable()  # no cycles are made; see eventstore.gc_pause
    try:
        check.feed(source(), check_canonical=True)
        send.send(check.state())
    except BaseException as error:  # reported by the parent
        send.send(ChainCheckFailed(f"the chain check could not read the log: {error!r}"))
    finally:
        send.close()


class ChainCheckProcess:
    """A forked child running ``check`` over ``source()``; :meth:`result` brings its state back into ``check``."""

    def __init__(self, check: ChainCheck, source: Callable[[], Iterable[RawEntry]]) -> None:
        context = multiprocessing.get_context("fork")
        self._check = check
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_check_in_child, args=(check, source, send), daemon=True,
                                        name="audit-chain")
        self._process.start()
        send.close()

    def result(self) -> ChainCheck:
        try:
            state = self._receive.recv()
        except EOFError:
            self._process.join()
            raise ChainCheckFailed(f"the chain check process died (exit code {self._process.exitcode})") from None
        finally:
            self._receive.close()
        self._process.join()
        if isinstance(state, BaseException):
            raise state
        self._check.restore(state)
        return self._check

    def abandon(self) -> None:
        self._process.kill()
        self._process.join()
        self._receive.close()
