import pytest

import localfixtures

_why = localfixtures.netns_unavailable()


def pytest_collection_modifyitems(config, items):
    if not _why:
        return
    skip = pytest.mark.skip(reason=f"network namespaces unavailable: {_why} (run as root on Linux)")
    for item in items:
        if "netns" in item.keywords and "tests/local/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)
