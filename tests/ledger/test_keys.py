"""Keys: 0600 files in a 0700 folder, never inside the ledger, checked against meta."""
from __future__ import annotations

import os
import stat

import pytest

from conftest import file_bytes
from ledger import KeyMaterialError, Ledger


def test_key_files_are_0600_and_folder_0700(new_ledger):
    led = new_ledger(5)
    folder = led.keys.folder
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    for name in ("ed25519.key", "hmac.salt"):
        assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o600


def test_no_secret_is_in_the_ledger_file_or_wal(new_ledger):
    led = new_ledger(50)
    led.sign_head()
    led.vacuum(0)
    secret_key = file_bytes(os.path.join(led.keys.folder, "ed25519.key"))
    salt = file_bytes(os.path.join(led.keys.folder, "hmac.salt"))
    for path in (led.path, led.path + "-wal"):
        blob = file_bytes(path)
        for secret in (secret_key, salt, secret_key.hex().encode(), salt.hex().encode()):
            assert secret not in blob


def test_open_permissions_are_refused(new_ledger):
    led = new_ledger(1)
    key = os.path.join(led.keys.folder, "ed25519.key")
    path, key_dir = led.path, led.key_dir
    led.close()
    os.chmod(key, 0o644)
    led = Ledger.open(path, key_dir=key_dir)
    with pytest.raises(KeyMaterialError, match="permissions too open"):
        led.sign_head()
    led.close()


def test_a_key_that_does_not_match_meta_is_refused(new_ledger, tmp_path):
    a = new_ledger(1, name="a")
    b = new_ledger(1, name="b")
    # put b's key where a's should be
    for name in ("ed25519.key", "hmac.salt"):
        os.remove(os.path.join(a.keys.folder, name))
    folder_a = os.path.join(a.key_dir, a.ledger_id)
    for name in ("ed25519.key", "hmac.salt"):
        with open(os.path.join(b.keys.folder, name), "rb") as src:
            fd = os.open(os.path.join(folder_a, name), os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, src.read())
            os.close(fd)
    fresh = Ledger.open(a.path, key_dir=a.key_dir)
    with pytest.raises(KeyMaterialError, match="does not match"):
        fresh.sign_head()
    fresh.close()


def test_each_ledger_gets_its_own_key(new_ledger):
    a, b = new_ledger(1, name="a"), new_ledger(1, name="b")
    assert a.public_key_text != b.public_key_text
    assert a.hmac_salt != b.hmac_salt
