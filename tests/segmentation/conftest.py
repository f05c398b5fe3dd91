from collections.abc import Iterator

import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """scikit-learn / BLAS on one thread: the cores are shared, and small k-means runs faster that way."""
    with threadpool_limits(limits=1):
        yield
