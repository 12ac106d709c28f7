"""Saved sessions: 0600 file in a 0700 directory, atomic writes, looser permissions refused."""

from __future__ import annotations

import os
import stat
from dataclasses import replace

import pytest

from bankctl.profile import ProfileError, SavedSession, config_dir, delete_session, load_session, save_session

SESSION = SavedSession(token="tok-123", account_id=7, role="customer", server_id="bank-x",
                       created_at="2026-11-24T00:00:00Z")


@pytest.fixture(autouse=True)
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    return tmp_path / "cfg"


def test_roundtrip_and_modes(config_home):
    path = save_session("default", SESSION)
    assert load_session("default") == SESSION
    assert config_dir() == config_home / "bankctl"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert os.listdir(path.parent) == [path.name]  # no temp file left behind


def test_profiles_are_separate():
    save_session("alice", SESSION)
    assert load_session("bob") is None
    assert load_session("alice") == SESSION
    assert delete_session("alice") and not delete_session("alice")
    assert load_session("alice") is None


def test_default_location_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_dir() == tmp_path / "home" / ".config" / "bankctl"


def test_looser_file_is_refused():
    path = save_session("default", SESSION)
    os.chmod(path, 0o644)
    with pytest.raises(ProfileError):
        load_session("default")


def test_looser_directory_is_refused():
    path = save_session("default", SESSION)
    os.chmod(path.parent, 0o755)
    with pytest.raises(ProfileError):
        load_session("default")
    with pytest.raises(ProfileError):
        save_session("default", SESSION)


def test_symlink_is_refused(tmp_path):
    path = save_session("default", SESSION)
    target = tmp_path / "elsewhere.json"
    target.write_text(path.read_text())
    os.chmod(target, 0o600)
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(ProfileError):
        load_session("default")


def test_overwrite_is_atomic_replace():
    path = save_session("default", SESSION)
    inode = os.stat(path).st_ino
    save_session("default", replace(SESSION, token="tok-456"))
    assert load_session("default").token == "tok-456"
    assert os.stat(path).st_ino != inode


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 65])
def test_bad_profile_names(name):
    with pytest.raises(ValueError):
        save_session(name, SESSION)


def test_corrupt_file(config_home):
    path = save_session("default", SESSION)
    path.write_text("{not json")
    with pytest.raises(ProfileError):
        load_session("default")
