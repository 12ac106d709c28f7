"""Authorization rules (DESIGN §8), pure: enforced by handlers and query servers, never by the CLI.

Customers act only on their own account. Admins open, close, list, read any account and erase customer data;
as tellers they may also deposit to and withdraw from a customer account (recorded with them as actor), but
they never transfer a customer's money.
"""

from __future__ import annotations

from auth_zkp.principal import Principal

CUSTOMER_OWN_ACCOUNT = frozenset(
    {"Deposit", "Withdraw", "Transfer", "UpdateProfile", "ChangePassword",
     "balance", "history", "account_show"}
)
ADMIN_ONLY = frozenset({"OpenAccount", "CloseAccount", "EraseCustomer", "account_list", "tx_list"})
ADMIN_ANY_ACCOUNT = frozenset(
    {"Deposit", "Withdraw", "UpdateProfile", "balance", "history", "account_show"}
)


def permission_error(principal: Principal | None, action: str, account: int | None) -> str | None:
    """``None`` when allowed, else a message for the refusal (exit code 4)."""
    if principal is None:
        return "not logged in: run 'bankctl login'"
    if action in ADMIN_ONLY:
        return None if principal.is_admin else f"{action} is for administrators only"
    if principal.is_admin:
        if action in ADMIN_ANY_ACCOUNT:
            return None
        if action == "ChangePassword" and account == principal.account_id:
            return None
        return f"administrators may not perform {action}"
    if action in CUSTOMER_OWN_ACCOUNT:
        if account == principal.account_id:
            return None
        return "customers may act only on their own account"
    return f"{action} is not permitted"
