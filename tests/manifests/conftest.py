import os

import pytest

import manifest_cases


@pytest.fixture(scope="session")
def crd_file():
    path = manifest_cases.crd_path()
    if path is None:
        pytest.skip("JobSet v0.12 CRD not found at ../shared/jobset/jobset-crd.yaml (relative to the project "
                    "root) nor in $JOBSET_CRD; it is upstream data the project does not ship")
    return path


@pytest.fixture(scope="session")
def crd(crd_file):
    from jobset_runtime.manifests.validate import load_crd

    return load_crd(str(crd_file))


@pytest.fixture
def update_golden():
    return os.environ.get("UPDATE_GOLDEN") == "1"
