import os

import pytest


@pytest.fixture
def token():
    return os.urandom(32).hex().encode()


@pytest.fixture
def token_file(tmp_path, token):
    path = tmp_path / "token"
    path.write_bytes(token + b"\n")
    return path
