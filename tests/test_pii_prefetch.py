"""Personal data of many customers opened with their data keys fetched in one go (rebuilds, projector batches)."""

from __future__ import annotations

import pytest

from eventstore.pii import ERASED, DataKeyUnreadable, PersonalDataVault
from tests.helpers_bank import TEST_MASTER_KEY


def test_prefetch_unwraps_every_key_and_leaves_erased_ones_erased(fake_redis, keys):
    writer = PersonalDataVault(fake_redis, keys=keys, master_key=TEST_MASTER_KEY)
    for account in range(1, 2501):  # more than one MGET chunk
        writer.create_data_key(account)
    sealed = {a: writer.seal(a, "phone", f"+1555{a:07d}") for a in range(1, 2501)}
    writer.destroy_data_key(7)

    reader = PersonalDataVault(fake_redis, keys=keys, master_key=TEST_MASTER_KEY)
    reader.prefetch([*sealed, 9_999])  # 9,999 has no key at all
    for account in range(1, 2501):
        fake_redis.delete(keys.data_key(account))  # from here on only what the prefetch unwrapped can open
    assert reader.open(1, "phone", sealed[1]) == "+15550000001"
    assert reader.open(2500, "phone", sealed[2500]) == "+15550002500"
    assert reader.open(7, "phone", sealed[7]) == ERASED


def test_a_prefetched_key_is_still_checked_against_its_account(fake_redis, keys):
    vault = PersonalDataVault(fake_redis, keys=keys, master_key=TEST_MASTER_KEY)
    vault.create_data_key(1)
    vault.create_data_key(2)
    fake_redis.set(keys.data_key(3), fake_redis.get(keys.data_key(1)))  # a key copied to another account
    reader = PersonalDataVault(fake_redis, keys=keys, master_key=TEST_MASTER_KEY)
    with pytest.raises(DataKeyUnreadable, match="account 3"):  # the wrapping is bound to the account id
        reader.prefetch([3])
    with pytest.raises(DataKeyUnreadable, match="account 3"):
        reader.data_key(3)
