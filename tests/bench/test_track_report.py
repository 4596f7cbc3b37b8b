"""``bench/track_report.py`` (RESULTS.md's frozen-setting report) reports what ``streamtrk
evaluate`` gives for the same chain: its chi2-keeping wrapper is transparent to
``evaluate``, which reads the reconstructor's beam spot and detector as well as calling it."""

from __future__ import annotations

from bench_scripts import bench_script

from streamtrk.eval.evaluate import evaluate
from streamtrk.recon.load import load_reconstructor


def test_the_report_is_what_evaluate_gives(small_events) -> None:
    bench = bench_script("track_report")
    rec = load_reconstructor(beam_spot=(0.1, -0.05))
    got = bench.run(small_events, rec)
    want = evaluate(rec, small_events).report()
    assert {k: got[k] for k in bench.KEYS} == {k: want[k] for k in bench.KEYS}
    assert got["n_tracks"] > 0 and 0 < got["chi2_ndf_median_matched"] < 10
