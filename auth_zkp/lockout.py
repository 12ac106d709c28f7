"""Per-account rate limit of failed logins (DESIGN §8).

Why: Argon2id slows offline guessing; online guessing is stopped here. Five failures within a sliding
15-minute window lock the account; each further lock within a day doubles the delay (5 min, 10, 20, ... capped
at 24 h). The counting runs in one Lua script so two handlers cannot both miss the fifth failure.
Unknown account ids are counted the same way, so a lock says nothing about whether an account exists.

State: hash ``{bank}:fail:<id>`` with ``times`` (space-separated failure times in the window), ``until``
(end of the current lock) and ``level`` (locks so far); it expires a day after the last failure.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from eventstore.keys import Keys

THRESHOLD = 5
WINDOW_S = 15 * 60
BASE_LOCK_S = 5 * 60
MAX_LOCK_S = 24 * 3600
STATE_TTL_S = 24 * 3600

_RECORD_FAILURE = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local threshold = tonumber(ARGV[3])
local base = tonumber(ARGV[4])
local max_delay = tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
local kept = {}
local raw = redis.call('HGET', key, 'times') or ''
for item in string.gmatch(raw, '%S+') do
  local t = tonumber(item)
  if t and t > now - window then
    kept[#kept + 1] = item
  end
end
kept[#kept + 1] = ARGV[1]
local failures = #kept
local level = tonumber(redis.call('HGET', key, 'level') or '0') or 0
local locked_until = ''
if failures >= threshold then
  level = level + 1
  local delay = base * (2 ^ (level - 1))
  if delay > max_delay then
    delay = max_delay
  end
  locked_until = string.format('%.3f', now + delay)
  redis.call('HSET', key, 'until', locked_until, 'level', tostring(level))
  kept = {}
end
redis.call('HSET', key, 'times', table.concat(kept, ' '))
redis.call('EXPIRE', key, ttl)
return {failures, locked_until}
"""


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    failures: int
    """Failures in the window including this one."""
    locked_until: float | None
    """Set when this failure locked the account."""


class Lockout:
    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: Keys,
        threshold: int = THRESHOLD,
        window_s: int = WINDOW_S,
        base_lock_s: int = BASE_LOCK_S,
        max_lock_s: int = MAX_LOCK_S,
    ) -> None:
        self._client = client
        self._keys = keys
        self._script = client.register_script(_RECORD_FAILURE)
        self._args = (window_s, threshold, base_lock_s, max_lock_s, STATE_TTL_S)

    def locked_until(self, account_id: int, now: float) -> float | None:
        """End of the current lock, or ``None`` when the account may try."""
        raw = self._client.hget(self._keys.login_failures(account_id), "until")
        if not raw:
            return None
        until = float(raw)
        return until if until > now else None

    def record_failure(self, account_id: int, now: float) -> FailureOutcome:
        failures, until = self._script(keys=[self._keys.login_failures(account_id)],
                                       args=[f"{now:.6f}", *self._args])
        until_text = until.decode() if isinstance(until, bytes) else until
        return FailureOutcome(int(failures), float(until_text) if until_text else None)

    def record_success(self, account_id: int) -> None:
        """Forget the failures; the lock level stays until it expires, so repeated attacks still escalate."""
        self._client.hdel(self._keys.login_failures(account_id), "times")
