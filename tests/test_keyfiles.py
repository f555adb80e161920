"""Private key files: written 0600 whatever was there before, never through a symlink, and a
warning naming the file and the fix when a loaded key is readable by group or world."""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_mailbox.executor.cli import main as edge_mailbox
from edge_mailbox.signer import KeyFileError, SigningKey
from edge_mailbox.worker.cli import main as edge_mailbox_worker

KEYGENS: dict[str, Callable[[Path], int]] = {
    "edge-mailbox-worker keygen": lambda p: edge_mailbox_worker(["keygen", str(p), "--force"]),
    "edge-mailbox keys generate": lambda p: edge_mailbox(["keys", "generate", str(p), "--force"]),
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("keygen", KEYGENS.values(), ids=KEYGENS.keys())
def test_force_over_a_0644_file_leaves_a_0600_key(tmp_path: Path, keygen) -> None:
    target = tmp_path / "key.pem"
    target.write_text("an old key, readable by everyone\n")
    target.chmod(0o644)
    assert keygen(target) == 0
    assert mode(target) == 0o600
    assert SigningKey.from_file(target).kid  # a key, not the old bytes
    assert {p.name for p in tmp_path.iterdir()} == {"key.pem", "key.pem.pub"}  # no temp file


@pytest.mark.parametrize("keygen", KEYGENS.values(), ids=KEYGENS.keys())
def test_force_over_a_symlink_replaces_the_link_not_what_it_points_to(
    tmp_path: Path, keygen
) -> None:
    victim, victim_pub = tmp_path / "victim", tmp_path / "victim.pub"
    victim.write_text("not yours\n")
    victim_pub.write_text("not yours either\n")
    target = tmp_path / "keys" / "key.pem"
    target.parent.mkdir()
    target.symlink_to(victim)
    target.with_name("key.pem.pub").symlink_to(victim_pub)
    assert keygen(target) == 0
    assert victim.read_text() == "not yours\n" and victim_pub.read_text() == "not yours either\n"
    assert not target.is_symlink() and mode(target) == 0o600
    assert not target.with_name("key.pem.pub").is_symlink()
    assert SigningKey.from_file(target).kid


def test_a_dangling_symlink_is_an_existing_file(tmp_path: Path) -> None:
    # Without --force nothing is overwritten: not even a symlink to a file not yet there,
    # which a plain open(O_CREAT) would create wherever the link points.
    target, elsewhere = tmp_path / "key.pem", tmp_path / "elsewhere" / "planted.pem"
    elsewhere.parent.mkdir()
    target.symlink_to(elsewhere)
    with pytest.raises(KeyFileError, match="exists"):
        SigningKey.generate().write(target)
    assert not elsewhere.exists()
    assert edge_mailbox_worker(["keygen", str(target)]) == 2
    assert not elsewhere.exists()


def test_loading_a_readable_private_key_warns_with_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = SigningKey.generate().write(tmp_path / "worker.pem")
    with caplog.at_level(logging.WARNING):
        SigningKey.from_file(path)
    assert not caplog.records  # 0600: nothing to say
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        SigningKey.from_file(path)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert str(path) in record.getMessage() and f"chmod 600 {path}" in record.getMessage()
