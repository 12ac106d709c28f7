"""Saved sessions, one per profile, under ``$XDG_CONFIG_HOME/bankctl/`` (DESIGN §9).

Why so strict: the file holds a bearer token. It lives in a 0700 directory as a 0600 file owned by the user,
is written atomically (temp file + ``os.replace``, so a crash never leaves half a token) and is refused when
its permissions are looser, rather than silently trusted.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

_PROFILE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


class ProfileError(PermissionError):
    """The saved-session file or its directory is unsafe or unreadable."""


@dataclass(frozen=True, slots=True)
class SavedSession:
    token: str
    account_id: int
    role: str
    server_id: str
    created_at: str


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "bankctl"


def session_path(profile: str) -> Path:
    if not _PROFILE.fullmatch(profile):
        raise ValueError("profile names are 1-64 letters, digits, '_', '-' or '.'")
    return config_dir() / f"{profile}.session.json"


def _check_private(path: Path, *, directory: bool) -> None:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise ProfileError(f"{path} is a symlink; refusing it")
    if directory != stat.S_ISDIR(info.st_mode):
        raise ProfileError(f"{path} is not a {'directory' if directory else 'regular file'}")
    if info.st_uid != os.getuid():
        raise ProfileError(f"{path} belongs to another user")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        wanted = "700" if directory else "600"
        raise ProfileError(f"{path} is accessible by others (mode {mode:o}); run: chmod {wanted} {path}")


def _ensure_dir() -> Path:
    directory = config_dir()
    if not directory.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is masked by umask
    _check_private(directory, directory=True)
    return directory


def save_session(profile: str, session: SavedSession) -> Path:
    path = session_path(profile)
    directory = _ensure_dir()
    data = json.dumps(asdict(session), sort_keys=True).encode()
    fd, temp = tempfile.mkstemp(prefix=".session-", dir=directory)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def load_session(profile: str) -> SavedSession | None:
    """The saved session, ``None`` when there is none; :class:`ProfileError` when the file is unsafe."""
    path = session_path(profile)
    if not path.parent.exists():
        return None
    _check_private(path.parent, directory=True)
    if not path.exists() and not path.is_symlink():
        return None
    _check_private(path, directory=False)
    try:
        raw = json.loads(path.read_bytes())
        return SavedSession(token=str(raw["token"]), account_id=int(raw["account_id"]), role=str(raw["role"]),
                            server_id=str(raw["server_id"]), created_at=str(raw["created_at"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ProfileError(f"{path} is corrupt; run 'bankctl login' again") from error


def delete_session(profile: str) -> bool:
    path = session_path(profile)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
