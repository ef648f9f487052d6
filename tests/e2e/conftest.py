"""One real Label Studio for the whole e2e session, with a project, tasks and annotations of several shapes
(tests/e2e/dataset.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.dataset import Dataset, create_dataset
from tests.e2e.label_studio import LabelStudio, NotInstallable, running_label_studio


@pytest.fixture(scope="session")
def label_studio() -> Iterator[LabelStudio]:
    try:
        with running_label_studio() as studio:
            yield studio
    except NotInstallable as exc:
        pytest.skip(f"END-TO-END TESTS SKIPPED: the real Label Studio cannot be installed here: {exc}")


@pytest.fixture(scope="session")
def dataset(label_studio: LabelStudio) -> Dataset:
    return create_dataset(label_studio, "annotation-proxy e2e")
