"""Owner-only files (keys, credentials) are read only when they are what they claim to be."""

from __future__ import annotations

import os

import pytest

from engage.core.files import read_private, write_private


def test_a_private_file_is_read(tmp_path):
    path = write_private(tmp_path / "key", "s3cret")
    assert read_private(path) == "s3cret"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: (p.write_text("k"), p.chmod(0o640)), "is readable by others (mode 640); chmod 600 it"),
        (lambda p: os.mkfifo(p, 0o600), "is not a regular file"),  # and no wait for a writer
        (lambda p: p.mkdir(mode=0o700), "is not a regular file"),
        (lambda p: (write_private(p.with_name("real"), "k"), p.symlink_to(p.with_name("real"))), "is a symbolic link"),
        (lambda p: None, "cannot read"),
        (lambda p: write_private(p, "k" * 5000), "is larger than 4096 bytes"),
        (lambda p: write_private(p, b"\xff\xfe"), "is not text"),
    ],
)
def test_anything_else_is_one_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "key"
    make(path)
    with pytest.raises(ValueError) as error:
        read_private(path)
    assert message in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)
