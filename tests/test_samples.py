"""The vendored sample payloads are AWS's documented ones, byte for byte."""

import pytest
from conftest import SHARED_SAMPLES, VENDORED_SAMPLES


@pytest.mark.skipif(not SHARED_SAMPLES.is_dir(), reason="../shared/samples is not beside this checkout")
def test_samples_copy_is_verbatim() -> None:
    shared = {p.name: p.read_bytes() for p in SHARED_SAMPLES.iterdir() if p.is_file()}
    vendored = {p.name: p.read_bytes() for p in VENDORED_SAMPLES.iterdir() if p.is_file()}
    assert vendored == shared
