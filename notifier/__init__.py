"""The SMS notifier (DESIGN §1, issue 5): one message per money movement or security event, never lost, never
doubled into the outbox.

Modules, one job each:
- ``templates``: pure event -> short text (what, amount, ****1234, balance after, time; never the other party).
- ``directory``: contacts rebuilt from the log by seq on every start (not from the group's deliveries, which a
  peer shares); opt-in as of the event, later opt-out or erasure wins; phones stay sealed until used.
- ``delivery``: the message, the dedupe ledger ``{bank}:sms:<event_id>:<account>`` (``sent:``/``dead:``/
  ``sending:<owner>`` lease), failure classes (transient / permanent / fatal) and backoff with jitter.
- ``senders``: ``OutboxSender`` (exactly once: flock, reconcile-by-offset, one write + fsync, MULTI to the
  ledger, then XACK) and ``TwilioSender`` (official SDK, explicit timeout; at least once in the window between
  Twilio accepting a message and the ledger write, since Twilio has no idempotency key).
- ``worker``: the ``Notifier`` (group ``notifier`` on ``{bank}:events`` from ``0``; own pending on start,
  XAUTOCLAIM from dead peers, bounded retry queue) and ``main`` for ``bankctl worker notifier``.
- ``status``: lag, pending and dead letters for ``bankctl status`` / ``bankctl notifier ...``.
"""
