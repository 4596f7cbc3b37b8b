"""The array-module helpers on NumPy (the CuPy side runs in the ``gpu`` tests)."""

import os
import signal
import warnings

import numpy as np
import pytest

import streamtrk.xp
from streamtrk.xp import (
    PARALLEL_BYTES,
    NotFinite,
    _copy_pool,
    argsort,
    bincount,
    chunk_bounds,
    concatenate_to_device,
    csr_rows,
    expand_ranges,
    index_of,
    lookup,
    nonzeros,
    running_total,
    scatter_min,
    to_host_packed,
)


def test_to_host_packed_gives_back_every_array_unchanged():
    rng = np.random.default_rng(5)
    arrays: dict[str, np.ndarray] = {
        "offsets": np.array([0, 3, 7], dtype=np.int64),
        "pt": rng.random(5, dtype=np.float32),  # 20 bytes: the next part starts padded
        "charge": np.array([1, -1, 1], dtype=np.int32),
        "hits": rng.integers(0, 100, size=(2, 3)),
        "empty": np.zeros(0, dtype=np.float64),
        "x": rng.random(4),
    }
    out = to_host_packed(arrays)
    assert list(out) == list(arrays)
    for k, v in arrays.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        assert np.array_equal(out[k], v), k
    assert out["x"].flags.aligned
    assert to_host_packed({}) == {}


def test_bincount_has_exactly_the_bins_asked_for():
    idx = np.array([0, 2, 2, 5])
    np.testing.assert_array_equal(bincount(idx, 7), [1, 0, 2, 0, 0, 1, 0])
    np.testing.assert_array_equal(bincount(idx, 6, np.array([0.5, 1, 2, 4])), [0.5, 0, 3, 0, 0, 4])
    assert bincount(idx[:0], 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="size=5"):
        bincount(idx, 5)


def test_csr_rows_gives_each_element_its_row():
    offsets = np.array([0, 2, 2, 5])
    np.testing.assert_array_equal(csr_rows(offsets), [0, 0, 2, 2, 2])
    np.testing.assert_array_equal(csr_rows(offsets, 5), [0, 0, 2, 2, 2])


def test_concatenate_to_device_packs_the_columns_in_one_buffer():
    rng = np.random.default_rng(2)
    columns: dict[str, list[np.ndarray]] = {
        "x": [rng.random(5, dtype=np.float32), rng.random(2, dtype=np.float32)],
        "layer": [np.array([1, 2, 3], dtype=np.int8), np.zeros(0, dtype=np.int8)],
        "r": [rng.random(4)],
        "id": [np.arange(3), np.arange(4)],
    }
    out = concatenate_to_device(columns, np)
    assert list(out) == list(columns)
    for k, parts in columns.items():
        assert out[k].dtype == parts[0].dtype
        np.testing.assert_array_equal(out[k], np.concatenate(parts))
    assert len({id(v.base) for v in out.values()}) == 1  # views of one buffer
    assert all(v.ctypes.data % v.itemsize == 0 for v in out.values())  # aligned


def test_concatenate_to_device_copies_large_batches_on_threads():
    """Past PARALLEL_BYTES the columns are copied on the pool's threads (where the process
    may use more than one CPU), the same bytes as one at a time."""
    rng = np.random.default_rng(3)
    n = PARALLEL_BYTES // 4 // 4 + 1  # four float32 columns: just past the threshold
    part = n // 3
    columns = {
        k: [rng.random(part, dtype=np.float32), rng.random(n - part, dtype=np.float32)]
        for k in "abcd"
    }
    small = {k: [p[:10] for p in parts] for k, parts in columns.items()}
    _copy_pool.cache_clear()
    concatenate_to_device(small, np)
    assert _copy_pool.cache_info().currsize == 0  # small: copied in the calling thread
    out = concatenate_to_device(columns, np)
    assert _copy_pool.cache_info().currsize == 1
    for k, parts in columns.items():
        np.testing.assert_array_equal(out[k], np.concatenate(parts), strict=True)
    columns["b"][1][-1] = np.nan  # checked on the threads too, where asked
    with pytest.raises(NotFinite) as e:
        concatenate_to_device(columns, np, finite=("a", "b"))
    assert e.value.columns == ["b"]
    concatenate_to_device(columns, np, finite=("a", "c"))
    # A forked child makes a pool of its own: the parent's would queue work for threads the
    # child does not have, and wait for ever (the child's alarm ends that in 20 s)
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12: fork() of a process with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover (the child: never back into pytest)
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler
            signal.alarm(20)
            os.close(read)
            fresh = _copy_pool.cache_info().currsize == 0
            concatenate_to_device(columns, np, finite=("a",))
            os.write(write, b"ok" if fresh else b"no")
        finally:
            os._exit(0)
    os.close(write)
    said = os.read(read, 2)
    status = os.waitpid(pid, 0)[1]
    os.close(read)
    assert said == b"ok" and status == 0, (said, status)


def test_chunk_bounds_by_count_by_weight_and_one_run_off_numpy():
    assert chunk_bounds(10, 3, np) == [0, 2, 5, 7, 10]  # 4 runs of 2-3 items
    assert chunk_bounds(0, 3, np) == [0, 0]
    # weights 4, 0, 4, 1, 1, 4 (total 14) in runs of about 4: a run starts at the item whose
    # running total reaches 3.5, 7 and 10.5
    assert chunk_bounds(6, 4, np, np.cumsum([4, 0, 4, 1, 1, 4])) == [0, 2, 5, 6]
    for chunk in (1, 3, 100):
        b = chunk_bounds(6, chunk, np, np.cumsum([4, 0, 4, 1, 1, 4]))
        assert b[0] == 0 and b[-1] == 6 and (np.diff(b) > 0).all()
    assert chunk_bounds(10, 3, xp=None) == [0, 10]  # not NumPy: the GPU's one run


def test_running_total_continues_each_scan_from_the_last(monkeypatch):
    """Scans of at most ``SCAN_CHUNK`` elements (CuPy's is wrong past 2^31), each part
    starting from the last's total: ``cumsum`` whatever the length against the parts."""
    monkeypatch.setattr(streamtrk.xp, "SCAN_CHUNK", 4)
    flags = np.random.default_rng(3).integers(0, 2, 23).astype(np.uint8)
    for n in (0, 1, 4, 5, 8, 23):  # within one part, at a part's end, past it
        got = running_total(flags[:n])
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, np.cumsum(flags[:n], dtype=np.int64))


def test_chunk_bounds_by_weight_as_a_search_for_the_float_targets():
    rng = np.random.default_rng(7)
    for n, chunk in ((1000, 7), (5000, 64), (333, 1000)):
        ends = np.cumsum(rng.integers(0, 9, n))
        total = int(ends[-1])
        targets = np.linspace(0, total, max(1, -(-total // chunk)) + 1)[1:-1]
        cuts = np.unique([0, *np.searchsorted(ends, targets), n]).tolist()
        assert chunk_bounds(n, chunk, np, ends) == cuts


def test_scatter_min_keeps_the_least_value_per_index():
    target = np.array([5, 9, 7, 2**40], dtype=np.int64)
    scatter_min(target, np.array([1, 1, 3, 0, 1]), np.array([4, 6, 2**35, 8, 3], np.int64))
    assert target.tolist() == [5, 3, 7, 2**35]


def test_index_of_finds_queries_in_unsorted_keys() -> None:
    index, found = index_of(np.array([30, 10, 20]), np.array([20, 40, 10, 5, 30]))
    assert index.tolist() == [2, 0, 1, 0, 0]  # 0 where not found
    assert found.tolist() == [True, False, True, False, True]
    index, found = index_of(np.zeros(0, np.int64), np.array([1, 2]))
    assert index.tolist() == [0, 0] and not found.any()


def test_lookup_gives_nan_where_not_found_and_from_an_empty_table() -> None:
    values = np.array([1.5, 2.5, 3.5], np.float32)
    got = lookup(values, *index_of(np.array([30, 10, 20]), np.array([20, 40, 30])))
    assert got.dtype == np.float64 and np.array_equal(got, [3.5, np.nan, 1.5], equal_nan=True)
    empty = lookup(values[:0], *index_of(np.zeros(0, np.int64), np.array([1, 2])))
    assert empty.dtype == np.float64 and np.isnan(empty).all() and len(empty) == 2


def test_expand_ranges_skips_empty_and_reversed_ranges() -> None:
    rid, pos = expand_ranges(np.array([0, 5, 2, 7]), np.array([2, 3, 4, 7]))
    assert rid.tolist() == [0, 0, 2, 2] and pos.tolist() == [0, 1, 2, 3]


def test_to_host_packed_pads_parts_of_any_byte_count() -> None:
    """Each part is padded to 8 bytes whatever its size, odd ones too (bools, int8): the
    parts after it start where their spans say."""
    arrays: dict[str, np.ndarray] = {
        "mask": np.array([True, False, True]),  # 3 bytes: 5 of padding
        "layer": np.arange(5, dtype=np.int8),  # 5 bytes: 3 of padding
        "x": np.array([1.5, -2.5, 3.25]),
    }
    out = to_host_packed(arrays)
    for k, v in arrays.items():
        assert out[k].dtype == v.dtype and np.array_equal(out[k], v), k


def test_concatenate_to_device_checks_finite_columns_below_the_parallel_size() -> None:
    """A small batch (copied in the calling thread) is checked as a large one is: NotFinite
    naming each column asked for that holds a NaN or an infinity, the others not checked."""
    columns = {
        "x": [np.array([1.0, np.nan], np.float32)],
        "y": [np.array([np.inf], np.float32), np.array([2.0], np.float32)],
        "z": [np.array([np.nan])],
    }
    with pytest.raises(NotFinite) as e:
        concatenate_to_device(columns, np, finite=("x", "y"))
    assert e.value.columns == ["x", "y"]
    assert concatenate_to_device(columns, np, finite=("w",))["y"].tolist()[1] == 2.0


def test_chunk_bounds_of_no_items_is_one_empty_run_by_weight_too() -> None:
    """No items, with an empty running total: ``[0, 0]`` (there is no last total to read)."""
    assert chunk_bounds(0, 4, np, np.zeros(0, np.int64)) == [0, 0]


def test_a_stable_argsort_keeps_tied_keys_in_their_order() -> None:
    """``stable``: ties keep their order on NumPy as on the device (NumPy's default sort
    does not keep them past a few dozen keys)."""
    keys = np.tile(np.array([2, 1, 2, 0], np.int64), 64)
    order = argsort(keys, stable=True)
    assert order.dtype == np.int64
    for value in (0, 1, 2):
        tied = order[keys[order] == value]
        assert tied.tolist() == np.flatnonzero(keys == value).tolist(), value
    assert np.array_equal(keys[argsort(keys)], np.sort(keys))  # unstable: sorted all the same


def test_nonzeros_gives_each_mask_its_own_indices() -> None:
    """One list of ascending int64 indices per mask, nonzero values counting as True."""
    got = nonzeros(np.array([True, False, True]), np.array([0, 3, 0, -1]), np.zeros(0, bool))
    assert [g.tolist() for g in got] == [[0, 2], [1, 3], []]
    assert all(g.dtype == np.int64 for g in got)


def test_expand_ranges_of_no_ranges_is_empty() -> None:
    """No ranges at all (an empty batch): no elements, not an error on the missing total."""
    rid, pos = expand_ranges(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert rid.tolist() == [] and pos.tolist() == []
