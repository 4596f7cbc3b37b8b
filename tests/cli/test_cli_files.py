"""``streamtrk simulate``, ``import-trackml``, ``inspect`` and ``export-trackml``."""

import json
import os
import sys
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import _simulate

from streamtrk.cli import main
from streamtrk.io.recording import RecordingWriter, exclusive_lock, iter_events, iter_records
from streamtrk.io.trackml import read_event
from streamtrk.wire import decode


def test_simulate_is_byte_identical_and_outputs_agree(tmp_path):
    _simulate(tmp_path / "one")
    _simulate(tmp_path / "two")
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.*"))
    assert len(files) == 1 + 2 * 3
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    # The recording and the CSV files hold the same events, truth included.
    for ev in iter_events(tmp_path / "one" / "a.stk"):
        csv = read_event(tmp_path / "one" / "csv" / f"event{ev.event:09d}")
        assert csv.hits.equals(ev.hits)
        assert csv.truth is not None and ev.truth is not None
        assert csv.truth.equals(ev.truth)


def test_simulate_compact_writes_the_same_events_in_fewer_bytes(tmp_path):
    args = ["simulate", "--events", "2", "--mu", "5", "--seed", "2", "-q", "-o"]
    assert main([*args, str(tmp_path / "wide.stk")]) == 0
    assert main([*args, str(tmp_path / "compact.stk"), "--compact"]) == 0
    wide, compact = (list(iter_events(tmp_path / f)) for f in ("wide.stk", "compact.stk"))
    assert len(wide) == len(compact) == 2
    for a, b in zip(wide, compact, strict=True):
        assert a.truth is not None and b.truth is not None
        assert a.hits.equals(b.hits) and a.truth.equals(b.truth)
    hits = {
        f: [m for _, m in iter_records(tmp_path / f) if decode(m).kind == "hits"]
        for f in ("wide.stk", "compact.stk")
    }
    assert {decode(m).version for m in hits["compact.stk"]} == {5}
    size = {f: sum(len(x) for m in ms for x in m[1:]) for f, ms in hits.items()}
    n_hits = sum(len(ev.hits) for ev in wide)
    assert size["wide.stk"] == 32 * n_hits and size["compact.stk"] <= 20 * n_hits


def test_simulate_adds_a_hard_scatter_in_the_asked_pt_range(tmp_path, capsys):
    out = tmp_path / "hs.stk"
    args = ["simulate", "--events", "2", "--mu", "2", "--seed", "4", "-q", "-o", str(out)]
    assert main([*args, "--hard-scatter", "6", "--hard-scatter-pt", "200,300"]) == 0
    for ev in iter_events(out):
        assert ev.truth is not None
        pt = ev.truth.particles.pt
        hard = (pt >= 200) & (pt <= 300)
        assert hard.sum() == 6 and (pt[~hard] < 200).all()
        # on the first vertex
        p = ev.truth.particles
        assert len(set(zip(p.vz[hard].tolist(), p.vx[hard].tolist(), strict=True))) == 1
    with pytest.raises(SystemExit) as stop:
        main([*args, "--hard-scatter", "1", "--hard-scatter-pt", "200"])
    assert stop.value.code == 2
    assert "expected LO,HI in GeV" in capsys.readouterr().err
    assert main([*args, "--hard-scatter", "1", "--hard-scatter-pt", "300,200"]) == 2
    assert "hard_scatter_pt must be 0 < low <= high" in capsys.readouterr().err
    assert main([*args, "--hard-scatter-pt", "200,300"]) == 2  # a range of no particles
    assert "--hard-scatter-pt is the range of --hard-scatter N's particles: give both" in (
        capsys.readouterr().err
    )


def test_simulate_overlaps_give_particles_two_hits_on_a_layer(tmp_path, capsys):
    out = tmp_path / "overlaps.stk"
    args = ["simulate", "--events", "1", "--mu", "5", "--seed", "3", "-q", "-o", str(out)]
    assert main([*args, "--overlaps", "0.5"]) == 0
    (ev,) = iter_events(out)
    assert ev.truth is not None
    signal = ev.truth.hits.particle_id > 0
    keys = np.stack([ev.truth.hits.particle_id, ev.hits.volume_id, ev.hits.layer_id])[:, signal]
    _, counts = np.unique(keys, axis=1, return_counts=True)
    assert 0.4 < np.mean(counts == 2) < 0.6  # (a looper may cross a layer twice, each with 2)
    assert main([*args, "--overlaps", "2"]) == 2
    assert "overlap fraction must be in [0, 1], got 2.0" in capsys.readouterr().err


def test_simulate_provokes_detector_faults(tmp_path, capsys):
    out = tmp_path / "faulty.stk"
    args = ["simulate", "--events", "2", "--mu", "5", "--seed", "3", "-q", "-o", str(out)]
    faults = ["--dead-layer", "8:4", "--dead-layer", "13:2", "--noisy-layer", "17:2:300"]
    assert main([*args, *faults, "--beam-spot=-0.5,0.25,3"]) == 0
    for ev in iter_events(out):
        layers = set(zip(ev.hits.volume_id.tolist(), ev.hits.layer_id.tolist(), strict=True))
        assert (8, 4) not in layers and (13, 2) not in layers and (8, 2) in layers
        assert ev.truth is not None
        noise = ev.truth.hits.particle_id == 0
        on_17_2 = (ev.hits.volume_id == 17) & (ev.hits.layer_id == 2)
        assert (noise & on_17_2).sum() > 200
        p = ev.truth.particles
        primary = np.hypot(p.vx + 0.5, p.vy - 0.25) < 0.1
        assert primary.sum() > 0.5 * len(p)
    # Malformed values are usage errors (exit 2) that say what was expected.
    for bad, expected in [
        (["--dead-layer", "8"], "expected VOL:LAYER"),
        (["--noisy-layer", "8:2:many"], "expected VOL:LAYER:HITS"),
        (["--beam-spot", "1,2"], "expected X,Y,Z in mm"),
    ]:
        with pytest.raises(SystemExit) as stop:
            main([*args, *bad])
        assert stop.value.code == 2
        assert expected in capsys.readouterr().err
    assert main([*args, "--dead-layer", "8:3"]) == 2
    assert "the detector has no layer 8:3" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[volumes]\n")
    for detector, said in [("none.toml", ": no such file"), ("bad.toml", "bad.toml: detector")]:
        assert main([*args, "--detector", str(tmp_path / detector)]) == 2
        assert said in capsys.readouterr().err


def test_inspect_reports_events_and_truth(tmp_path, capsys):
    _simulate(tmp_path)
    capsys.readouterr()
    assert main(["inspect", "--json", str(tmp_path / "a.stk")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events"] == 2 and summary["events_with_truth"] == 2
    assert summary["hits_max"] >= summary["hits_mean"] > 1000
    assert summary["versions"] == [1, 2] and summary["error"] is None


def test_inspect_says_records_that_are_no_valid_message(tmp_path, capsys):
    """Whole records the readers refuse (a dead letter, here one not msgpack): counted, and
    said on stderr, since replay and evaluate stop at them."""
    _simulate(tmp_path)
    with RecordingWriter(tmp_path / "a.stk", "a") as w:
        w.write([b"\xc1"])
    capsys.readouterr()
    assert main(["inspect", "--json", str(tmp_path / "a.stk")]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["invalid"] == {"not_msgpack": 1}
    assert out.err == (
        "streamtrk inspect: 1 of the records are no valid message (see 'invalid'): replay,"
        " evaluate and export-trackml stop at the first; a daemon's dead letters are all"
        " such records\n"
    )


def test_a_truncated_file_is_named_with_its_offset_and_inspect_repair_mends_it(tmp_path, capsys):
    """A crash mid-write leaves the last record cut: every reader names the offset and the
    remedy; ``inspect --repair`` cuts the file back to its whole records, says what it cut,
    and leaves an intact file as it is."""
    _simulate(tmp_path)
    data = (tmp_path / "a.stk").read_bytes()
    cut = tmp_path / "cut.stk"
    cut.write_bytes(data[:-100])
    last = [offset for offset, _ in iter_records(tmp_path / "a.stk")][-1]
    remedy = f"; `streamtrk inspect --repair {cut}` cuts it back to the whole records before "
    capsys.readouterr()
    assert main(["inspect", "--json", str(cut)]) == 1  # counts, then the error
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["events"] == 2 and summary["events_with_truth"] == 1
    assert f"offset {last}" in summary["error"] and summary["cut_at"] == last
    assert out.err == f"streamtrk inspect: error: {summary['error']}{remedy}offset {last}\n"
    assert main(["evaluate", str(cut), "--oracle", "-q"]) == 1
    assert capsys.readouterr().err.endswith(f"{remedy}offset {last}\n")
    assert main(["inspect", "--json", "--repair", str(cut)]) == 0
    out = capsys.readouterr()
    # the last event's truth was cut: its hits go too (read back, no truth would be said)
    hits = [offset for offset, _ in iter_records(tmp_path / "a.stk")][-2]
    assert out.err == (
        f"streamtrk inspect: cut {len(data) - 100 - hits} bytes: {summary['error']}; with "
        "event 1/1's hits, its truth cut\n"
    )
    repaired = json.loads(out.out)
    assert repaired["error"] is None and repaired["file_bytes"] == hits
    assert (repaired["events"], repaired["events_with_truth"]) == (1, 1)
    assert main(["inspect", "--repair", str(cut)]) == 0  # intact now: nothing to say
    assert capsys.readouterr().err == "" and cut.read_bytes() == data[:hits]


def test_a_recording_being_written_is_not_repaired_nor_said_to_need_it(tmp_path, capsys):
    """Its last record may be the one its writer (a tap) is in the middle of: --repair
    would cut it, and the writer would go on past a hole. Refused, file unchanged."""
    _simulate(tmp_path)
    cut = tmp_path / "cut.stk"
    cut.write_bytes((tmp_path / "a.stk").read_bytes()[:-100])
    fd = exclusive_lock(cut)  # as a tap's writer holds it
    try:
        capsys.readouterr()
        assert main(["inspect", "--repair", str(cut)]) == 1
        assert capsys.readouterr().err == (
            f"streamtrk inspect: error: {cut} is being written by another process (a "
            "`streamtrk record` tap, a daemon's dead letters): --repair would cut the record "
            "it is writing; stop that process first\n"
        )
        assert main(["inspect", str(cut)]) == 1
        assert capsys.readouterr().err.endswith(
            "; another process is writing it (a `streamtrk record` tap?): its last record may "
            "be the one being written; read it again once that process has stopped\n"
        )
    finally:
        os.close(fd)
    assert cut.stat().st_size == len((tmp_path / "a.stk").read_bytes()) - 100


def test_inspect_repair_leaves_damage_that_whole_records_follow(tmp_path, capsys):
    """Two recordings concatenated: the second's file header reads as a damaged record with
    whole records after it. --repair cuts only a damaged tail (a crash's): here it would drop
    every event of the second, so the file is left as it was and the error says why."""
    _simulate(tmp_path)
    data = (tmp_path / "a.stk").read_bytes()
    both = tmp_path / "both.stk"
    both.write_bytes(data + data)
    capsys.readouterr()
    assert main(["inspect", "--repair", str(both)]) == 1
    err = capsys.readouterr().err
    assert both.read_bytes() == data + data
    assert "streamtrk inspect: cut " not in err and f"--repair {both}" not in err, err
    assert f"streamtrk inspect: --repair left {both} as it was: it cuts only a damaged" in err


@pytest.mark.realdata
def test_import_trackml_round_trips_to_csv(tmp_path, shared_trackml):
    prefix = shared_trackml / "qallse_ez-0.5_hpt-1.0" / "event000001000"
    assert main(["import-trackml", str(prefix), "-o", str(tmp_path / "real.stk"), "-q"]) == 0
    assert main(["export-trackml", str(tmp_path / "real.stk"), "-o", str(tmp_path / "out")]) == 0
    before, after = read_event(prefix), read_event(tmp_path / "out" / "event000001000")
    assert len(after.hits) == 27_543
    assert after.truth is not None and before.truth is not None
    assert after.hits.equals(before.hits) and after.truth.equals(before.truth)
    # Numerically unchanged: every value equals the float32 parse of the original text.
    orig = np.loadtxt(f"{prefix}-hits.csv", delimiter=",", skiprows=1)
    assert np.array_equal(after.hits.x, orig[:, 1].astype(np.float32))


def test_export_trackml_never_overwrites_an_event_of_another_run(tmp_path, capsys):
    _simulate(tmp_path)
    first = next(iter_events(tmp_path / "a.stk"))
    with RecordingWriter(tmp_path / "runs.stk") as w:
        w.write_event(first)
        w.write_event(first)  # recorded twice (a looped replay): written once, said
        other = replace(first, run=first.run + 1, hits=first.hits.take(np.arange(10)), truth=None)
        w.write_event(other)
    out = tmp_path / "out"
    assert main(["export-trackml", str(tmp_path / "runs.stk"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"event number {first.event} occurs in run {first.run} and run {first.run + 1}" in err
    assert not out.exists()  # all events or none: not the first one alone
    second = list(islice(iter_events(tmp_path / "a.stk"), 2))[1]
    with RecordingWriter(tmp_path / "looped.stk") as w:  # a looped replay of 2 events, 3 times
        for _ in range(3):
            w.write_event(first)
            w.write_event(second)
    assert main(["export-trackml", str(tmp_path / "looped.stk"), "-o", str(tmp_path / "o2")]) == 0
    assert (
        "2 events recorded more than once were written once (4 later copies left out)"
        in capsys.readouterr().err
    )


def test_export_trackml_shows_its_progress_unless_quiet(tmp_path, capsys):
    _simulate(tmp_path)
    assert main(["export-trackml", str(tmp_path / "a.stk"), "-o", str(tmp_path / "o")]) == 0
    assert "export: 2event" in capsys.readouterr().err
    assert main(["export-trackml", str(tmp_path / "a.stk"), "-o", str(tmp_path / "q"), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_two_events_of_one_run_and_number_are_refused_not_merged(tmp_path, capsys):
    """Two recordings joined (two simulations of one run) hold other events under the same
    run and number: ``export-trackml`` would write the first alone and ``evaluate`` pair
    one's submission rows with the other's; both refuse, writing nothing."""
    _simulate(tmp_path)
    first, second = list(iter_events(tmp_path / "a.stk"))
    joined = tmp_path / "joined.stk"
    with RecordingWriter(joined) as w:
        w.write_event(first)
        w.write_event(replace(second, event=first.event))
    out = tmp_path / "out"
    assert main(["export-trackml", str(joined), "-o", str(out)]) == 1
    where = f"event number {first.event} occurs in run {first.run} twice, with other hits"
    assert where in capsys.readouterr().err
    assert not out.exists()
    submission = tmp_path / "s.csv"
    assert main(["evaluate", str(joined), "--oracle", "-q", "--submission", str(submission)]) == 1
    err = capsys.readouterr().err
    assert f"two events with other hits are both run {first.run}, event {first.event}" in err
    assert not submission.exists()
    # replay matches replies by msg_id, but its submission too names events by number: it
    # wrote the first one's rows, each hit a track of its own, and the other's not at all
    replay = ["replay", str(joined), "--to", "tcp://127.0.0.1:9", "--from", "tcp://127.0.0.1:7"]
    assert main([*replay, "-q", "--submission", str(submission)]) == 1
    err = capsys.readouterr().err
    assert f"(run {first.run}, event {first.event} among them" in err, err
    assert not submission.exists()


def test_export_trackml_of_no_events_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.stk"
    RecordingWriter(empty).close()
    assert main(["export-trackml", str(empty), "-o", str(tmp_path / "out")]) == 1
    assert f"streamtrk export-trackml: error: no events in {empty}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no folder made for nothing


def test_export_trackml_again_replaces_the_event_files_and_says_so(tmp_path, capsys):
    _simulate(tmp_path)
    first = next(iter_events(tmp_path / "a.stk"))
    with RecordingWriter(tmp_path / "bare.stk") as w:
        w.write_event(replace(first, hits=first.hits.take(np.arange(10)), truth=None))
    out = tmp_path / "out"
    assert main(["export-trackml", str(tmp_path / "a.stk"), "-o", str(out)]) == 0
    assert "replaced" not in capsys.readouterr().err
    assert main(["export-trackml", str(tmp_path / "bare.stk"), "-o", str(out)]) == 0
    assert f"1 events replaced the files of the same event number in {out}" in (
        capsys.readouterr().err
    )
    back = read_event(out / f"event{first.event:09d}")
    assert back.truth is None and len(back.hits) == 10  # not the first export's truth


def test_simulate_into_a_csv_folder_again_says_what_it_replaced(tmp_path, capsys):
    csv = tmp_path / "csv"
    args = ["simulate", "--mu", "1", "-q", "-o", str(tmp_path / "s.stk"), "--trackml-dir", str(csv)]
    assert main([*args, "--events", "1"]) == 0
    assert "replaced" not in capsys.readouterr().err
    assert main([*args, "--events", "2", "--seed", "9"]) == 0
    assert f"1 events replaced the files of the same event number in {csv}" in (
        capsys.readouterr().err
    )
    assert sorted(p.name for p in csv.glob("*-hits.csv")) == [
        "event000000000-hits.csv", "event000000001-hits.csv"
    ]  # fmt: skip


def test_errors_are_clear_and_exit_nonzero(tmp_path, capsys):
    assert main(["import-trackml", str(tmp_path / "nope"), "-o", str(tmp_path / "x.stk")]) == 1
    (tmp_path / "bad.stk").write_bytes(b"not a recording")
    assert main(["inspect", str(tmp_path / "bad.stk")]) == 1
    err = capsys.readouterr().err
    assert "streamtrk import-trackml: error" in err and "streamtrk inspect: error" in err
    assert "--repair" not in err  # a file that is no recording is not for it to mend
    assert not (tmp_path / "x.stk").exists()
    # a recording of no event is no simulation (demo and evaluate refuse it too)
    assert main(["simulate", "--events", "0", "-q", "-o", str(tmp_path / "x.stk")]) == 2
    assert f"--events must be 1 to {sys.maxsize}, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.stk").exists()
    huge = 10**20  # not "run and event numbers must be below 2**63, got 10**20 - 1"
    assert main(["simulate", "--events", str(huge), "-q", "-o", str(tmp_path / "x.stk")]) == 2
    assert f"--events must be 1 to {sys.maxsize}, got {huge}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (["simulate", "-q", "-o", "{folder}"], "{folder} is a folder, not a file"),
        (
            ["simulate", "-q", "-o", "{file}/x.stk"],
            "cannot write {file}/x.stk: {file} is a file, not a folder",
        ),
        (
            ["simulate", "-q", "-o", "{new}", "--trackml-dir", "{file}"],
            "{file} is a file, not a folder",
        ),
        (["import-trackml", "-q", "{csv}", "-o", "{folder}"], "{folder} is a folder, not a file"),
        (["export-trackml", "{run}", "-o", "{file}"], "{file} is a file, not a folder"),
    ],
)
def test_an_output_that_cannot_be_written_is_named_before_the_work(tmp_path, capsys, command, said):
    """Refused before the events are made or read, in words: they failed after the work,
    with "[Errno 17] File exists", or "[Errno 21] Is a directory" naming the partial file."""
    run = tmp_path / "run.stk"
    main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(run), "--trackml-dir",
          str(tmp_path / "csv")])  # fmt: skip
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    names = {k: str(tmp_path / k) for k in ("folder", "file", "new", "csv")} | {"run": str(run)}
    before = sorted(tmp_path.rglob("*"))
    assert main([a.format(**names) for a in command]) == 1
    assert capsys.readouterr().err.endswith(f"error: {said.format(**names)}\n")
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("run", ["-1", str(2**63)])
def test_import_trackml_refuses_a_run_number_out_of_range_in_words(tmp_path, capsys, run):
    """Said as the option's fault, before the events are read (it was the wire's
    "bad_header: run must be an int in [0, 2**63)", at the first event written)."""
    _simulate(tmp_path)
    out = tmp_path / "x.stk"
    assert main(["import-trackml", str(tmp_path / "csv"), "--run", run, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"streamtrk import-trackml: error: --run must be 0 to 2**63 - 1, got {run}\n"
    assert not out.exists()


def test_a_failed_import_leaves_the_recording_there(tmp_path, capsys):
    kept = tmp_path / "kept.stk"
    assert main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(kept)]) == 0
    before = kept.read_bytes()
    (tmp_path / "event000000001-hits.csv").write_text("hit_id,x,y,z,volume_id,layer_id,module_id\n")
    (tmp_path / "event000000002-hits.csv").write_text("not,a,trackml,file\n")
    assert main(["import-trackml", str(tmp_path), "-o", str(kept), "-q"]) == 1
    assert "event000000002-hits.csv: missing column" in capsys.readouterr().err
    assert kept.read_bytes() == before  # neither cut short nor replaced by the first event
    assert sorted(p.name for p in tmp_path.glob("kept.stk*")) == ["kept.stk"]


def _without_particles(csv: Path) -> None:
    (particles,) = csv.glob("*-particles.csv")
    particles.unlink()


def _truth_row_cut(csv: Path) -> None:
    (truth,) = csv.glob("*-truth.csv")
    rows = truth.read_text().splitlines()
    truth.write_text("\n".join(rows[:-1]) + "\n")  # a hit without its truth row


@pytest.mark.parametrize(
    ("damage", "refused"),
    [
        (_without_particles, "has truth but no -particles.csv"),
        (_truth_row_cut, "no row for hit_id"),  # --no-truth neither reads nor checks it
    ],
)
def test_truth_that_cannot_be_imported_leaves_the_hits_alone_with_no_truth(
    tmp_path, capsys, damage, refused
):
    csv = tmp_path / "csv"
    main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(tmp_path / "s.stk"),
          "--trackml-dir", str(csv)])  # fmt: skip
    damage(csv)
    out = tmp_path / "x.stk"
    assert main(["import-trackml", str(csv), "-o", str(out), "-q"]) == 1
    assert refused in capsys.readouterr().err
    assert main(["import-trackml", str(csv), "-o", str(out), "-q", "--no-truth"]) == 0
    (ev,) = iter_events(out)
    assert ev.truth is None and ev.hits.equals(next(iter_events(tmp_path / "s.stk")).hits)


def test_an_event_of_noise_alone_is_imported_with_its_truth(tmp_path):
    """No particle, so none without kinematics: a particles file of its header alone is
    the whole truth (refused as "truth but no -particles.csv" where all() of no particle
    is True)."""
    csv = tmp_path / "csv"
    main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(tmp_path / "s.stk"),
          "--trackml-dir", str(csv)])  # fmt: skip
    (particles,) = csv.glob("*-particles.csv")
    particles.write_text(particles.read_text().splitlines()[0] + "\n")
    (truth,) = csv.glob("*-truth.csv")
    header, *rows = truth.read_text().splitlines()
    pid = header.split(",").index("particle_id")
    rows = [",".join("0" if i == pid else v for i, v in enumerate(r.split(","))) for r in rows]
    truth.write_text("\n".join([header, *rows]) + "\n")
    out = tmp_path / "x.stk"
    assert main(["import-trackml", str(csv), "-o", str(out), "-q"]) == 0
    (ev,) = iter_events(out)
    assert ev.truth is not None and len(ev.truth.particles) == 0


def test_inspect_repair_of_no_file_makes_none(tmp_path, capsys):
    missing = tmp_path / "missing.stk"
    assert main(["inspect", "--repair", str(missing)]) == 1
    assert capsys.readouterr().err == (
        f"streamtrk inspect: error: {missing}: No such file or directory\n"
    )
    assert not missing.exists()


def test_import_trackml_numbers_its_events_run_0_unless_told(tmp_path) -> None:
    """TrackML files carry no run number: the import's events are of run 0 (its --help's
    default), or of --run's."""
    _simulate(tmp_path)  # a.stk of run 1, its events as CSV in csv/
    for extra, run in (([], 0), (["--run", "7"], 7)):
        out = tmp_path / f"run{run}.stk"
        assert main(["import-trackml", str(tmp_path / "csv"), "-q", "-o", str(out), *extra]) == 0
        assert {ev.run for ev in iter_events(out)} == {run}


def test_inspect_json_is_sorted_and_strict(tmp_path, capsys) -> None:
    """``inspect --json`` prints its keys sorted (two recordings' summaries diff line by
    line) and strict JSON (null, not NaN)."""
    _simulate(tmp_path)
    capsys.readouterr()
    assert main(["inspect", "--json", str(tmp_path / "a.stk")]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert list(summary) == sorted(summary)
