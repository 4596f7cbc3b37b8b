"""The event model: its columns' checks (a clear error, never a later crash) and helpers."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from streamtrk.event import (
    HIT_DTYPES,
    HIT_TRUTH_DTYPES,
    PARTICLE_DTYPES,
    TRACK_PARAM_DTYPES,
    Event,
    Hits,
    HitTruth,
    Particles,
    Tracks,
    Truth,
    alone_as_tracks,
)

WIRE_PROTOCOL = Path(__file__).resolve().parents[1] / "docs" / "wire-protocol.md"


def _documented_columns(after: str) -> list[tuple[str, str]]:
    """The columns docs/wire-protocol.md lists in the first code span after ``after``, in
    order: ``name <dtype``, or names sharing the dtype of the next one given
    (``hit.tx, hit.ty <f4``), prefixes (``hit.``, ``particle.``) dropped."""
    doc = WIRE_PROTOCOL.read_text()
    span = re.search(r"`([^`]*<[^`]*)`", doc[doc.index(after) :])
    assert span is not None, after
    columns: list[tuple[str, str]] = []
    pending: list[str] = []
    for item in span[1].replace("\n", " ").split(","):
        name, *dtype = item.split()
        pending.append(name.rsplit(".", 1)[-1])
        if dtype:
            columns += [(n, dtype[0]) for n in pending]
            pending = []
    assert not pending, after
    return columns


@pytest.mark.parametrize(
    ("after", "dtypes"),
    [
        ("**hits** (one row per hit", HIT_DTYPES),
        ("then one row per track:", TRACK_PARAM_DTYPES),
        ("the per-hit truth columns prefixed", HIT_TRUTH_DTYPES),
        ("then the particle columns prefixed", PARTICLE_DTYPES),
    ],
)
def test_the_columns_are_the_wire_protocol_s(after: str, dtypes: dict[str, str]) -> None:
    """Names, order and dtypes: what every producer, daemon and reader of recordings reads."""
    assert _documented_columns(after) == list(dtypes.items())


def hits_of(n: int) -> Hits:
    """``n`` hits whose every column counts 0, 1, ..."""
    return Hits(**{k: np.arange(n).astype(dt) for k, dt in Hits.DTYPES.items()})


def truth_of(n_hits: int, n_particles: int) -> Truth:
    return Truth(
        HitTruth(**{k: np.arange(n_hits).astype(dt) for k, dt in HitTruth.DTYPES.items()}),
        Particles(**{k: np.arange(n_particles).astype(dt) for k, dt in Particles.DTYPES.items()}),
    )


@pytest.mark.parametrize(
    ("column", "value", "error", "match"),
    [
        ("x", np.zeros((3, 1), "<f4"), ValueError, r"^Hits.x must be 1-D, got shape \(3, 1\)$"),
        ("x", np.zeros(3, np.float64), TypeError, r"^Hits.x must have dtype float32, got float64$"),
        ("hit_id", np.arange(3, dtype=np.int32), TypeError, r"^Hits.hit_id must have dtype int64"),
        ("module_id", np.arange(3), TypeError, r"^Hits.module_id must have dtype int32, got int64"),
        ("y", np.zeros(2, np.float32), ValueError, r"^Hits.y has length 2, expected 3$"),
        ("hit_id", np.arange(4), ValueError, r"^Hits.x has length 3, expected 4$"),
    ],
)
def test_a_column_of_the_wrong_shape_dtype_or_length_is_named(
    column: str, value: np.ndarray, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        replace(hits_of(3), **{column: value})


def test_each_kind_of_columns_names_itself_and_counts_its_rows() -> None:
    assert (len(hits_of(3)), len(hits_of(0))) == (3, 0)
    truth = truth_of(4, 2)
    assert (len(truth.hits), len(truth.particles)) == (4, 2)
    with pytest.raises(TypeError, match=r"^HitTruth.weight must have dtype float32"):
        replace(truth.hits, weight=np.zeros(4))
    with pytest.raises(ValueError, match=r"^Particles.nhits has length 3, expected 2$"):
        replace(truth.particles, nhits=np.zeros(3, np.int32))


@pytest.mark.parametrize(
    ("column", "values", "error"),
    [
        ("volume_id", [8, 2**32 + 8, 9], "Hits.volume_id must hold whole numbers of int32's"),
        ("hit_id", [1.2, 1.7, 2.0], "Hits.hit_id must hold whole numbers of int64's"),
        ("hit_id", np.array([1, 2**63, 3], np.uint64), "Hits.hit_id must hold whole numbers"),
        ("hit_id", [1.0, np.nan, 3.0], "Hits.hit_id must hold whole numbers"),
        ("x", [1.0, 1e40, 3.0], "Hits.x holds a finite number past float32's range"),
        ("z", ["1", "2", "3"], "Hits.z must be numeric"),
    ],
)
def test_from_columns_refuses_a_cast_that_changes_a_value(column, values, error) -> None:
    """The cast made other ids without a word: volume 2**32 + 8 became 8 (reconstructed as
    volume 8), hit ids 1.2 and 1.7 both 1, 2**63 a negative one; 1e40 an infinite x."""
    cols = {k: [5, 6, 7] for k in HIT_DTYPES} | {column: values}
    with pytest.raises((ValueError, TypeError), match=re.escape(error)):
        Hits.from_columns(cols)
    kept = {k: [5, 6, 7] for k in HIT_DTYPES} | {"hit_id": [1.0, 2.0, 2**40], "x": [0.1, -1e30, 3]}
    assert Hits.from_columns(kept).hit_id.tolist() == [1, 2, 2**40]  # whole floats, as CSV gives


def test_from_columns_names_the_columns_missing() -> None:
    """A column missing was a bare KeyError, where every other mistake names its column."""
    cols = {k: [5, 6, 7] for k in HIT_DTYPES if k not in ("module_id", "z")}
    with pytest.raises(ValueError, match="Hits has no column z, module_id"):
        Hits.from_columns(cols)


def test_from_columns_converts_to_the_column_dtypes_and_take_picks_rows() -> None:
    hits = Hits.from_columns({k: [5, 6, 7] for k in HIT_DTYPES})
    assert {k: str(v.dtype) for k, v in hits.columns().items()} == {
        k: np.dtype(dt).name for k, dt in HIT_DTYPES.items()
    }
    picked = hits.take(np.array([2, 0]))
    assert all(v.tolist() == [7, 5] for v in picked.columns().values())
    assert hits.to(np).equals(hits)


def test_equal_columns_are_equal_and_have_equal_digests() -> None:
    a, b = hits_of(3), hits_of(3)
    assert a.equals(b) and a.digest() == b.digest()
    other = replace(b, z=np.array([0, 1, 5], np.float32))
    assert not a.equals(other) and a.digest() != other.digest()
    # Particles and per-hit truth have nine columns each: equal numbers are not equal columns.
    truth = truth_of(2, 2)
    assert truth.hits.digest() != truth.particles.digest()
    assert not truth.hits.equals(truth.particles)
    assert truth.equals(truth_of(2, 2))
    assert not truth.equals(Truth(truth.hits, truth.particles.take(np.array([1, 0]))))
    assert not truth.equals(Truth(truth.hits.take(np.array([1, 0])), truth.particles))


def test_events_and_their_parts_compare_by_identity_and_hash() -> None:
    """``==`` is identity (``equals`` compares values): comparing arrays element-wise has no
    single truth value, and the objects stay usable as dict keys and in sets."""
    hits, truth = hits_of(3), truth_of(3, 2)
    offsets, hit_index = np.array([0, 3]), np.arange(3)
    for make in (  # two of each from the same parts (arrays of equal values for the columns)
        lambda: hits_of(3),
        lambda: truth.hits.take(np.arange(3)),
        lambda: truth.particles.take(np.arange(2)),
        lambda: Truth(truth.hits, truth.particles),
        lambda: Event(1, 2, hits, truth),
        lambda: Tracks(offsets, hit_index),
    ):
        a, b = make(), make()
        assert a == a and a != b and len({a, b}) == 2


def test_an_event_s_truth_has_one_entry_per_hit() -> None:
    Event(1, 2, hits_of(3), truth_of(3, 1))
    assert Event(1, 2, hits_of(3)).truth is None
    with pytest.raises(ValueError, match=r"^truth has 2 hits, event has 3$"):
        Event(1, 2, hits_of(3), truth_of(2, 1))


def test_particle_kinematics() -> None:
    p = Particles.from_columns(
        {
            **{k: [0, 0] for k in Particles.DTYPES},
            "vx": [4, 1],
            "vy": [6, 2],
            "px": [3, 0],
            "py": [4, 0],
            "pz": [5 * np.sinh(1.0), 1.0],
        }
    )
    assert p.pt.tolist() == [5.0, 0.0]
    np.testing.assert_allclose(p.vr, [np.hypot(4, 6), np.hypot(1, 2)], rtol=1e-6)
    np.testing.assert_allclose(p.vr_from((1.0, 2.0)), [5.0, 0.0], atol=1e-6)
    # A particle along the beam: pz over a pT of at least 1e-12 GeV, not a division by 0.
    np.testing.assert_allclose(p.eta, [1.0, np.arcsinh(1e12)], rtol=1e-6)


@pytest.mark.parametrize(
    ("offsets", "params", "match"),
    [
        (np.zeros(0, np.int64), {}, r"^Tracks.offsets must be 1-D with at least one entry$"),
        (np.zeros((1, 1), np.int64), {}, r"^Tracks.offsets must be 1-D"),
        (np.array([0, 1, 2]), {"pt": np.zeros(1)}, r"^Tracks.params\['pt'\] has length 1, exp"),
        (np.array([0, 1]), {"eta": np.zeros(1), "pt": np.zeros(2)}, r"length 2, expected 1$"),
    ],
)
def test_tracks_refuse_offsets_and_params_that_do_not_fit(
    offsets: np.ndarray, params: dict[str, np.ndarray], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        Tracks(offsets, np.zeros(int(offsets.reshape(-1)[-1:].sum()), np.int64), params)


def test_tracks_hit_lists_sizes_and_submission_labels() -> None:
    tracks = Tracks(np.array([0, 2, 2, 5]), np.array([4, 0, 1, 2, 3]))
    assert len(tracks) == 3
    assert tracks.sizes.tolist() == [2, 0, 3]
    assert [h.tolist() for h in tracks.hit_lists()] == [[4, 0], [], [1, 2, 3]]
    labels = tracks.track_id_per_hit(7)
    assert labels.dtype == np.int64 and labels.tolist() == [1, 3, 3, 3, 1, 0, 0]
    empty = Tracks.empty()
    assert len(empty) == 0 and empty.hit_lists() == []
    assert (empty.offsets.tolist(), empty.offsets.dtype, empty.hit_index.dtype) == (
        [0],
        np.int64,
        np.int64,
    )
    assert {k: v.dtype for k, v in empty.params.items()} == {
        k: np.dtype(dt) for k, dt in TRACK_PARAM_DTYPES.items()
    }
    assert empty.track_id_per_hit(2).tolist() == [0, 0]


@pytest.mark.parametrize(
    ("track_id", "alone"),
    [
        ([0, 3, 0, 1], [4, 3, 5, 1]),
        ([0, 0], [1, 2]),
        ([2, 2], [2, 2]),
        ([], []),
    ],
)
def test_hits_in_no_track_become_tracks_of_their_own(track_id: list, alone: list) -> None:
    assert alone_as_tracks(np.array(track_id, dtype=np.int64)).tolist() == alone


def test_a_0_d_column_is_named_not_a_len_error() -> None:
    with pytest.raises(ValueError, match=r"^Hits.x must be 1-D, got shape \(\)$"):
        replace(hits_of(3), x=np.zeros((), np.float32))


@pytest.mark.parametrize("column", list(HIT_DTYPES))
def test_every_column_counts_in_the_digest(column: str) -> None:
    """``cli/files.py`` tells a re-sent event from a clash by the digest: hits that differ in
    any one column are not the same hits."""
    a = hits_of(3)
    b = replace(a, **{column: (getattr(a, column) + 1).astype(HIT_DTYPES[column])})
    assert not a.equals(b) and a.digest() != b.digest()


def test_a_hit_in_several_tracks_gets_the_last_s_label() -> None:
    tracks = Tracks(np.array([0, 2, 4]), np.array([0, 1, 1, 2]))  # hit 1 in tracks 1 and 2
    assert tracks.track_id_per_hit(3).tolist() == [1, 2, 2]


def test_a_strided_column_has_the_digest_of_its_copy() -> None:
    """A column that is a view (every other value, a column of a 2-D array) hashes as its
    values do, not an error on a non-contiguous buffer."""
    xyz = np.arange(9, dtype=np.float32).reshape(3, 3)
    a = replace(hits_of(3), x=xyz[:, 0], z=np.arange(6, dtype=np.float32)[::2])
    b = replace(a, x=a.x.copy(), z=a.z.copy())
    assert a.equals(b) and a.digest() == b.digest()


def test_submission_labels_are_int64_whatever_they_came_as() -> None:
    assert alone_as_tracks(np.array([0, 2], np.int32)).dtype == np.int64
    assert alone_as_tracks([]).dtype == np.int64  # type: ignore[arg-type]
