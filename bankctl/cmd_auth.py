"""``bankctl init``, ``login``, ``logout``, ``whoami`` and ``password change`` (DESIGN §8, §9).

The password is read hidden (or one line from stdin with ``--password-stdin``), stretched with Argon2id
and turned into a Schnorr proof here; only the proof (or, for registration, ``X``) is sent. There is
deliberately no ``--password`` option: a password on the command line ends up in shell history and ``ps``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import redis

from auth_zkp.sessions import client_token, new_exchange_key
from bankctl.output import BankctlError, Exit, emit, json_option, raise_for_reply

if TYPE_CHECKING:
    from bankctl.profile import SavedSession


def _settings(ctx: click.Context) -> Any:
    return ctx.obj


def _read_password(*, from_stdin: bool, prompt: str, confirm: bool) -> str:
    """One line from stdin, or a hidden prompt (typed twice when ``confirm``)."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    else:
        password = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)
    if not password:
        raise BankctlError("empty password", Exit.INVALID, "invalid_request")
    return password


def _new_password(*, from_stdin: bool, prompt: str) -> str:
    from auth_zkp.kdf import password_problem

    password = _read_password(from_stdin=from_stdin, prompt=prompt, confirm=True)
    if problem := password_problem(password):
        raise BankctlError(problem, Exit.INVALID, "invalid_request")
    return password


def _bank_client(settings: Any) -> Any:
    from commands.client import BankClient

    return BankClient(settings.connect_bus("client"), keys=settings.keys)


def _send(bank: Any, request_type: str, payload: dict[str, Any], session: str | None = None) -> dict[str, Any]:
    """One request/reply; unreachable Redis or no reply is exit 5."""
    from bankctl.session_client import call_bank
    from commands.client import Request

    return call_bank(lambda: bank.command(Request(type=request_type, payload=payload, session=session)))


def _login_start(bank: Any, account: int) -> dict[str, Any]:
    return raise_for_reply(_send(bank, "LoginStart", {"account": account}))


def _prove(password: str, account: int, start: dict[str, Any]) -> dict[str, str]:
    from auth_zkp.client_proof import BadServerReply, prove_from_start

    try:
        return prove_from_start(password, account, start)
    except BadServerReply as error:
        raise BankctlError(f"unexpected reply from the bank: {error}", Exit.UNEXPECTED) from error


def _authenticate(bank: Any, account: int, password: str) -> SavedSession:
    """Two round trips: LoginStart (challenge, salt) then LoginFinish (proof); returns the new session."""
    from bankctl.profile import SavedSession

    start = _login_start(bank, account)
    proof = _prove(password, account, start)
    private, public = new_exchange_key()
    finish = raise_for_reply(_send(bank, "LoginFinish", {"account": account, **proof, "session_public": public.hex()}))
    try:
        token = client_token(private, public, str(finish["session_id"]), bytes.fromhex(str(finish["server_public"])))
    except (KeyError, ValueError) as error:
        raise BankctlError(f"unexpected reply from the bank: {error}", Exit.UNEXPECTED) from error
    return SavedSession(token=token, account_id=int(finish["account"]), role=str(finish["role"]),
                        server_id=str(start["server_id"]),
                        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def _login(bank: Any, account: int, password: str, profile: str) -> dict[str, Any]:
    """Log in and save the session to ``profile``."""
    session = _authenticate(bank, account, password)
    _save(profile, session)
    return {"ok": True, "account": session.account_id, "role": session.role, "profile": profile}


def login(settings: Any, account: int, password: str) -> SavedSession:
    """Log in with the zero-knowledge proof and return the :class:`~bankctl.profile.SavedSession`, unsaved.

    For callers that keep the session elsewhere (the interactive shell keeps it in memory).
    A refusal is raised as :class:`BankctlError` (wrong password and unknown account look the same).
    """
    return _authenticate(_bank_client(settings), account, password)


def revoke(settings: Any, session: SavedSession) -> None:
    """Tell the bank to end ``session`` (best effort: the reply is not checked, like ``logout``)."""
    _send(_bank_client(settings), "Logout", {}, session=session.token)


def _save(profile: str, session: Any) -> None:
    from bankctl.profile import ProfileError, save_session

    try:
        save_session(profile, session)
    except (ProfileError, ValueError) as error:
        raise BankctlError(str(error), Exit.DENIED, "not_permitted") from error


def _load(profile: str) -> Any:
    from bankctl.profile import ProfileError, load_session

    try:
        session = load_session(profile)
    except (ProfileError, ValueError) as error:
        raise BankctlError(str(error), Exit.DENIED, "not_permitted") from error
    if session is None:
        raise BankctlError(f"not logged in (profile {profile}): run 'bankctl login --account N'", Exit.DENIED,
                           "unauthenticated")
    return session


@click.command("login")
@click.option("--account", "account", type=click.IntRange(0, 10**12), required=True, help="Account number.")
@click.option("--password-stdin", is_flag=True, help="Read the password as one line from standard input.")
@json_option
@click.pass_context
def login_cmd(ctx: click.Context, account: int, password_stdin: bool, as_json: bool) -> None:
    """Log in with a zero-knowledge proof of your password (the password never leaves this program)."""
    settings = _settings(ctx)
    password = _read_password(from_stdin=password_stdin, prompt="Password", confirm=False)
    result = _login(_bank_client(settings), account, password, settings.profile)
    emit(as_json, result, f"logged in as account {result['account']} ({result['role']}), profile {settings.profile}")


@click.command("logout")
@json_option
@click.pass_context
def logout_cmd(ctx: click.Context, as_json: bool) -> None:
    """Revoke the saved session on the bank and forget it here."""
    from bankctl.profile import delete_session

    settings = _settings(ctx)
    session = _load(settings.profile)
    try:
        revoke(settings, session)
    finally:
        delete_session(settings.profile)  # forgotten locally even when the bank could not be told
    emit(as_json, {"ok": True, "account": session.account_id, "profile": settings.profile}, "logged out")


@click.command("whoami")
@json_option
@click.pass_context
def whoami_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show who the saved session belongs to (checked with the bank: a revoked session is exit 4)."""
    settings = _settings(ctx)
    session = _load(settings.profile)
    reply = raise_for_reply(_send(_bank_client(settings), "WhoAmI", {}, session=session.token))
    data = {"ok": True, "account": reply["account"], "role": reply["role"], "profile": settings.profile,
            "server_id": session.server_id, "since": session.created_at}
    emit(as_json, data, f"account {data['account']} ({data['role']}), profile {settings.profile}")


@click.group("password")
def password_group() -> None:
    """Manage your password."""


@password_group.command("change")
@click.option("--password-stdin", is_flag=True,
              help="Read the old and then the new password, one line each, from standard input.")
@json_option
@click.pass_context
def password_change_cmd(ctx: click.Context, password_stdin: bool, as_json: bool) -> None:
    """Change your password; proves the old one first. Other sessions are revoked; this one is renewed."""
    from auth_zkp.client_proof import make_credential

    settings = _settings(ctx)
    session = _load(settings.profile)
    old = _read_password(from_stdin=password_stdin, prompt="Current password", confirm=False)
    new = _new_password(from_stdin=password_stdin, prompt="New password")
    bank = _bank_client(settings)
    start = _login_start(bank, session.account_id)
    if start.get("server_id") != session.server_id:
        raise BankctlError("the bank's server id changed since login: log in again", Exit.DENIED, "not_permitted")
    proof = _prove(old, session.account_id, start)
    credential = make_credential(new)
    payload = {"type": "ChangePassword", "account": session.account_id, "credential": credential, "proof": proof}
    raise_for_reply(_send(bank, "ChangePassword", payload, session=session.token))
    result = _login(bank, session.account_id, new, settings.profile)
    emit(as_json, {**result, "changed": True}, "password changed")


@click.command("init")
@click.option("--admin-password-stdin", is_flag=True, help="Read the admin password as one line from stdin.")
@click.option("--data-dir", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory (overrides the global --data-dir / BANKCTL_DATA_DIR).")
@json_option
@click.pass_context
def init_cmd(ctx: click.Context, admin_password_stdin: bool, data_dir: Path | None, as_json: bool) -> None:
    """Create the data directory, keys (mode 0600), Redis ACL users and the admin account 0."""
    from bankctl.config import Settings

    settings = _settings(ctx)
    if data_dir is not None:
        settings = Settings(data_dir=data_dir.resolve(), redis_url_override=settings.redis_url_override,
                            profile=settings.profile, keys=settings.keys)
    result = _initialise(settings, admin_password_stdin)
    emit(as_json, result, lambda: f"initialised {result['data_dir']}: admin account 0 created (seq {result['seq']})")


def _initialise(settings: Any, password_stdin: bool) -> dict[str, Any]:
    from auth_zkp.client_proof import make_credential
    from bankctl import bootstrap
    from bankctl.acl import credentials, write_acl_file
    from bankctl.embedded_redis import RedisUnavailable, start_redis
    from eventstore.pii import PersonalDataVault, load_master_key

    data_dir: Path = settings.data_dir
    bootstrap.ensure_private_dir(data_dir)
    bootstrap.ensure_master_key(settings.master_key_path)
    bootstrap.ensure_signing_key(settings.signing_key_path)
    bootstrap.ensure_transport_key(settings.transport_key_path)
    server_id = bootstrap.ensure_server_id(data_dir / "server_id")
    acl_file = write_acl_file(data_dir, settings.keys)

    started = None
    try:
        if settings.embedded and not _answers(settings):
            try:
                started = start_redis(settings.redis_dir, acl_file=acl_file,
                                      wait_password=credentials(data_dir, "admin"))
            except RedisUnavailable as error:
                raise BankctlError(str(error), Exit.UNAVAILABLE, "unavailable") from error
        client = settings.connect("admin")
        try:
            if bootstrap.admin_exists(client, settings.keys):
                raise BankctlError(f"{data_dir} is already initialised (account 0 exists)", Exit.INVALID,
                                   "invalid_request")
            password = _new_password(from_stdin=password_stdin, prompt="New admin password")
            credential = make_credential(password)
            vault = PersonalDataVault(client, keys=settings.keys, master_key=load_master_key(settings.master_key_path))
            seq = bootstrap.open_admin_account(client, keys=settings.keys, vault=vault, credential=credential)
        except bootstrap.AlreadyInitialised as error:
            raise BankctlError(str(error), Exit.INVALID, "invalid_request") from error
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise BankctlError(f"Redis is not reachable: {error}", Exit.UNAVAILABLE, "unavailable") from error
        finally:
            client.close()
    finally:
        if started is not None:
            started.stop()
    return {"ok": True, "data_dir": str(data_dir), "account": 0, "role": "admin", "seq": seq,
            "server_id": server_id}


def _answers(settings: Any) -> bool:
    """Whether the embedded Redis is already running (then init uses it and leaves it running)."""
    try:
        client = settings.connect("admin", socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, FileNotFoundError):
        return False


def register(cli: click.Group) -> None:
    for command in (init_cmd, login_cmd, logout_cmd, whoami_cmd, password_group):
        cli.add_command(command)
