"""The derived-dataset cache: built once, keyed by parameters, atomic, memory-mapped."""

import numpy as np
import pytest

from datamodules.cache import cache_key, cached_arrays


def test_built_once_and_memory_mapped(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"frames": np.arange(24, dtype=np.uint8).reshape(2, 3, 4)}

    first = cached_arrays("toy", {"n": 2}, build, tmp_path)
    second = cached_arrays("toy", {"n": 2}, build, tmp_path)
    assert calls == [1]
    assert isinstance(second["frames"], np.memmap)
    np.testing.assert_array_equal(first["frames"], second["frames"])


def test_parameters_key_the_cache(tmp_path):
    a = cached_arrays("toy", {"n": 1}, lambda: {"x": np.zeros(1, np.uint8)}, tmp_path)
    b = cached_arrays("toy", {"n": 2}, lambda: {"x": np.ones(2, np.uint8)}, tmp_path)
    assert a["x"].shape == (1,) and b["x"].shape == (2,)
    assert cache_key({"a": 1, "b": 2}) == cache_key({"b": 2, "a": 1})


def test_failed_build_leaves_no_cache(tmp_path):
    def broken():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cached_arrays("toy", {"n": 3}, broken, tmp_path)
    assert list(tmp_path.iterdir()) == []
    out = cached_arrays("toy", {"n": 3}, lambda: {"x": np.full(3, 7, np.uint8)}, tmp_path)
    assert out["x"].tolist() == [7, 7, 7]
