"""The device run's script, dry-run on the CPU: every part it reaches runs and the JSON has
the shape the GPU issue asks for (a failure here would cost a device session)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_dry_run_on_the_cpu(device_dry_run: tuple[str, Path], tmp_path: Path) -> None:
    """The benchmark part of the device run's dry run (``--device cpu --events 2 --mu 10
    --batches 1 2 --configs eager_fp32``)."""
    bench_json = device_dry_run[1] / "gpu_bench.json"
    result = json.loads(bench_json.read_text())
    parts = result["parts"]
    failed = {k: v["error"] for k, v in parts.items() if isinstance(v, dict) and "error" in v}
    assert failed == {}
    # In order: the daemon's configuration (on the CPU eager fp32) before the daemon.
    assert list(parts) == ["info", "transfers", "eager_fp32", "daemon", "bf16_parity", "kernels"]
    for size, moved in parts["transfers"]["by_batch"].items():  # the chain's upload, download
        assert moved["upload_bytes"] >= 20 * 200 * int(size) and moved["d2h_bytes"] > 0, size
    assert "cudagraph_skips" in parts["eager_fp32"]  # counted (eager on the CPU: none to skip)
    assert parts["daemon"]["status_model"]["engine"] == "eager"  # what it served, from /status
    scraped = parts["daemon"]["metrics"]  # the heap frozen, the collections' pauses
    assert any(line.startswith("streamtrk_gc_frozen_objects ") for line in scraped)
    full = 'streamtrk_gc_pause_seconds_count{generation="2"}'
    assert any(line.startswith(full) for line in scraped)
    assert parts["info"]["prune"] is True  # the shipped card's settings, pruning included
    assert parts["eager_fp32"]["batches"]["1"]["stage_ms"]["prune"] > 0
    assert parts["daemon"]["exit_code"] == 0
    for size in ("1", "2"):  # the kernels' host build, against the array operations
        k = parts["kernels"][size]
        assert k["edges"] > 0 and k["same_edges"] and k["same_features"] and k["same_mask"]
        assert k["tracks"] > 0 and k["same_gls"] and k["gls_ms"]["kernels"] > 0
    for timed in parts["eager_fp32"]["batches"].values():  # by generation, heap frozen
        assert len(timed["gc_collections"]) == 3 and min(timed["gc_collections"]) >= 0
    rows = result["summary"]["end_to_end"]
    assert [(r["batch"], r["engine"], r["precision"]) for r in rows] == [
        (1, "eager", "fp32"),
        (2, "eager", "fp32"),
    ]
    assert all(r["mu"] == 10 and r["events_per_second"] > 0 and r["p99_ms"] > 0 for r in rows)
    table = result["summary"]["against_reference"]
    stages = {(r["batch"], r["stage"]) for r in table if r["config"] == "eager_fp32"}
    assert stages == {(b, s) for b in (1, 2) for s in ("graph", "gnn", "tracks")}
    assert all(r["ratio"] > 0 for r in table)
    assert table[-1]["config"] == "daemon" and table[-1]["events_per_second"] > 0
    daemon = result["summary"]["daemon"]
    assert daemon["events_per_s_max_rate"] > 0 and daemon["latency_p99_ms_100hz"] > 0
    # The latency replay at half the chain's batch-1 rate in this run, each replay's mean
    # batch size from the daemon's metrics.
    batch1 = parts["eager_fp32"]["batches"]["1"]["events_per_s"]
    assert daemon["rate_hz_batch1"] == round(min(100.0, batch1 / 2), 2)
    assert parts["daemon"]["replay_batch1"]["offered_rate_hz"] == daemon["rate_hz_batch1"]
    assert daemon["latency_p99_ms_batch1"] > 0 and daemon["mean_batch_events_batch1"] >= 1
    # Each event is sent when due or later: from the schedule, no less than from the send.
    assert daemon["latency_from_schedule_p99_ms_100hz"] >= daemon["latency_p99_ms_100hz"] - 1e-6
    assert daemon["send_lag_max_ms_100hz"] >= 0
    assert parts["daemon"]["replay_max_rate"]["mean_batch_events"] >= 1

    # What the device session commits: the raw result under bench/results, and the summary.
    report = [sys.executable, str(ROOT / "bench" / "gpu_report.py")]
    report += [str(bench_json), "--results-dir", str(tmp_path / "results")]
    report += ["--markdown", str(tmp_path / "summary.md")]
    done = subprocess.run(report, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    [saved] = (tmp_path / "results").iterdir()
    assert saved.name == f"cpu-{result['date'][:10]}.json"
    committed = json.loads(saved.read_text())
    assert list(committed)[:3] == ["gpu", "date", "end_to_end"]
    assert committed["end_to_end"] == rows and committed["parts"] == parts
    text = (tmp_path / "summary.md").read_text()
    assert "| eager_fp32 | 1 |" in text and "| eager_fp32 | 2 |" in text
    assert "| graph | " in text and "Daemon (`--device cpu" in text
    assert "Failed, skipped" not in text
    assert "Full garbage collections inside the timed batches (heap frozen): " in text


def test_report_takes_the_best_batch_64_and_kernels_without_pruning(gpu_report) -> None:
    """The batch-64 target is met by the best configuration; a kernels row is the same result
    only where its edges and features both are, the triplet cuts' arrays then kernels."""
    row = {"mu": 200, "batch": 64, "engine": "compile", "precision": "bf16", "p50_ms": 1.0}
    summary = {
        "end_to_end": [
            row | {"events_per_second": 800.0},
            row | {"events_per_second": 1234.5},
            row | {"events_per_second": None},
        ]
    }
    search = {"search_ms": {"arrays": 2.0, "kernels": 0.5}, "same_edges": True}
    kernels = {
        "16": search | {"same_features": True},
        "64": search | {"same_features": False, "triplets_ms": {"arrays": 3.0, "kernels": 1.0}},
    }
    result = {"date": "2026-12-01", "summary": summary, "parts": {"kernels": kernels}}
    text = gpu_report.markdown(result, "x.json")
    assert "at batch 64, 1,234.5 (target 1,000)" in text
    assert "| 16 | 2.00 | 0.50 | n/a | n/a | n/a | n/a | yes |" in text
    assert "| 64 | 2.00 | 0.50 | 3.00 | 1.00 | n/a | n/a | NO |" in text


def test_report_names_full_collections_inside_timed_batches(gpu_report) -> None:
    timed = {"events_per_s": 1.0, "wall_ms": {"p50": 1.0, "p99": 2.0}, "stage_ms": {}}
    batches = {
        "1": timed | {"gc_collections": [40, 3, 1]},
        "16": timed | {"gc_collections": [9, 2, 0]},  # only younger generations: not listed
    }
    result = {"date": "2026-12-01", "summary": {}, "parts": {"compile_bf16": {"batches": batches}}}
    text = gpu_report.markdown(result, "x.json")
    assert "inside the timed batches (heap frozen): compile_bf16 batch 1: 1." in text


def test_report_says_what_a_p99_is_of_and_lists_replays_that_lost_events(gpu_report) -> None:
    """A p99 of fewer than 100 timings is about the largest: the table says of how many; a
    daemon replay skipped, or with events missing, is listed (its latencies are only of the
    replies that came)."""
    timed = {"events_per_s": 1.0, "wall_ms": {"p50": 1.0, "p99": 2.0, "n": 8}, "stage_ms": {}}
    hundred = timed | {"wall_ms": {"p50": 1.0, "p99": 2.0, "n": 100}}
    daemon = {
        "replay_100hz": {"received": 60, "missing": 4, "errors": {}, "exit_code": 1},
        "replay_batch1": {"skipped": "time budget"},
    }
    parts = {"compile_bf16": {"batches": {"16": timed, "64": hundred}}, "daemon": daemon}
    text = gpu_report.markdown({"date": "2026-12-01", "summary": {}, "parts": parts}, "x.json")
    assert "| compile_bf16 | 16 | 1.0 | 1.0 | 2.0 (of 8) |" in text
    assert "| compile_bf16 | 64 | 1.0 | 1.0 | 2.0 |" in text
    assert "- daemon replay_100hz: 4 missing, errors none, exit code 1" in text
    assert "- daemon replay_batch1: time budget" in text
    assert "p99 n/a ms (from when due n/a ms, sends up to n/a ms late) of 60 replies" in text


def test_report_lists_parts_cut_or_run_otherwise_than_asked(gpu_report) -> None:
    """Each part that failed, was skipped or cut, fell back or ran without CUDA graphs; each
    replay that failed or ended otherwise than 0; a daemon that served otherwise than asked,
    or exited otherwise than 0 when stopped."""
    graphs: dict[str, Any] = {"cuda_graphs": True, "fallback_reason": None, "batches": {}}
    parts = {
        "compile_bf16_cudagraphs": graphs | {"cudagraph_skips": 2},
        "compile_bf16": graphs | {"cuda_graphs": False, "cudagraph_skips": 0},
        "eager_fp32": {"batches": {}, "interrupted": "SIGINT (time limit)"},
        "eager_bf16": {"error": "RuntimeError: boom", "batches": {}},
        "bf16_parity": {"skipped": "time budget"},
        "compile_fp32": {"fallback_reason": "eager: inductor failed", "batches": {}},
        "daemon": {
            "replay_max_rate": {"error": "TimeoutError: no reply"},
            "replay_100hz": {"received": 64, "missing": 0, "errors": {}, "exit_code": -9},
            "status_model": {"engine": "compile", "engine_note": "CUDA graphs off: X"},
            "exit_code": 1,
        },
        "daemon_again": {"status_model": "not read: timed out", "exit_code": 0},
    }
    text = gpu_report.markdown({"date": "2026-12-05", "summary": {}, "parts": parts}, "x.json")
    listed = text.split("Failed, skipped, cut or not as asked:\n\n")[1].splitlines()
    assert listed == [
        "- compile_bf16_cudagraphs: 2 graph(s) run without CUDA graphs",
        "- eager_fp32: SIGINT (time limit)",
        "- eager_bf16: RuntimeError: boom",
        "- bf16_parity: time budget",
        "- compile_fp32: eager: inductor failed",
        "- daemon replay_max_rate: TimeoutError: no reply",
        "- daemon replay_100hz: 0 missing, errors none, exit code -9"
        " (its latencies are of the replies received)",
        "- daemon: exited with 1 when stopped (its log_tail says why)",
        "- daemon served: CUDA graphs off: X",
        "- daemon_again /status: not read: timed out",
    ]


def test_a_part_cut_or_failing_keeps_what_it_measured(tmp_path: Path) -> None:
    """The step's time limit (SIGINT: KeyboardInterrupt) or an error in a part: the results
    it had put in ``bench.partial`` are written with the reason; the interrupt goes on."""
    from bench_scripts import bench_script

    gpu_bench = bench_script("gpu_bench")
    bench = gpu_bench.Bench(tmp_path, budget_s=100)

    def measured_then(exc: BaseException) -> dict[str, object]:
        bench.partial = {"replay_max_rate": {"events_per_second": 9.0}}
        raise exc

    bench.part("failing", 0, lambda: measured_then(RuntimeError("boom")))
    with pytest.raises(KeyboardInterrupt):
        bench.part("cut", 0, lambda: measured_then(KeyboardInterrupt()))
    parts = json.loads((tmp_path / "gpu_bench.json").read_text())["parts"]
    for name in ("failing", "cut"):
        assert parts[name]["replay_max_rate"] == {"events_per_second": 9.0}, name
    assert parts["failing"]["error"] == "RuntimeError: boom"
    assert parts["cut"]["interrupted"] == "SIGINT (time limit)"


def test_report_lists_another_gpu_and_batch_sizes_that_failed(gpu_report) -> None:
    """A run on another card than the targets' H200 is said; so is each batch size that
    failed (out of memory at batch 64) or was skipped, inside a part that ran."""
    batches = {"16": {"skipped": "time budget"}, "64": {"error": "OutOfMemoryError: x"}}
    parts = {
        "info": {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3"},
        "compile_bf16": {"batches": batches},
    }
    result = {"date": "2026-12-05 10:00:00 UTC", "summary": {"gpu": parts["info"]["gpu"]}}
    assert gpu_report.results_name(result) == "h100-2026-12-05.json"  # the card's model
    text = gpu_report.markdown(result | {"parts": parts}, "x.json")
    listed = text.split("Failed, skipped, cut or not as asked:\n\n")[1].splitlines()
    assert listed == [
        "- info: the GPU is an NVIDIA H100 80GB HBM3, not the H200 of the targets and the"
        " reference figures: its ratios to them are not the issue's",
        "- compile_bf16 batch 16: time budget",
        "- compile_bf16 batch 64: OutOfMemoryError: x",
    ]


def test_the_gnn_limit_is_the_cards_own() -> None:
    """The GNN's share of the GPU's limit is of the card it ran on (an H100 moves 3.35 TB/s,
    the H200 4.8): none for a card without datasheet figures."""
    from bench_scripts import bench_script

    from streamtrk.recon.model import load_model, shipped_model_path

    gpu_bench = bench_script("gpu_bench")
    cfg = load_model(shipped_model_path())[0].config
    figures = {
        gpu: gpu_bench.gnn_figures(cfg, "compile", "bf16", 1e6, 1e5, 1e-3, gpu)
        for gpu in ("NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA A100")
    }
    assert [f["limits_of"] for f in figures.values()] == ["H200", "H100", "H100 PCIe", None]
    # Each engine against its own reference: eager 1.9M edges in 123 ms, none for TensorRT.
    eager = gpu_bench.gnn_figures(cfg, "eager", "fp32", 1e6, 1e5, 1e-3, "NVIDIA H200")
    assert eager["over_reference"] == pytest.approx(1e9 / (1.9e6 / 0.123))
    trt = gpu_bench.gnn_figures(cfg, "tensorrt", "bf16", 1e6, 1e5, 1e-3, "NVIDIA H200")
    assert (trt["reference"], trt["over_reference"]) == (None, None)
    memory_bound = {g: f for g, f in figures.items() if f.get("limit_bound_by") == "memory"}
    assert len(memory_bound) == 3  # the shipped network's few FLOPs an edge
    h200, h100 = figures["NVIDIA H200"], figures["NVIDIA H100 80GB HBM3"]
    assert h100["limit_ms"] == pytest.approx(h200["limit_ms"] * 4.8 / 3.35)
    assert "of_limit" not in figures["NVIDIA A100"]


def _report(gpu_report: Any, argv: list[str]) -> None:
    """``bench/gpu_report.py`` run in this process with ``argv``."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "argv", ["gpu_report", *argv])
        gpu_report.main()


def test_report_leaves_out_host_path_figures_it_was_not_given(gpu_report, tmp_path, capsys):
    """The host-path step cut or failed: the report is written without its figures (into a
    results folder it makes, parents too)."""
    result = {"date": "2026-12-05 10:00:00 UTC", "summary": {"gpu": "NVIDIA H200"}, "parts": {}}
    (tmp_path / "gpu_bench.json").write_text(json.dumps(result))
    argv = [str(tmp_path / "gpu_bench.json"), "--results-dir", str(tmp_path / "a" / "results")]
    _report(gpu_report, [*argv, "--host-path", str(tmp_path / "host_path.json")])
    out, err = capsys.readouterr()
    assert "host_path.json: host-path figures left out" in err
    assert "### GPU chain: NVIDIA H200" in out
    assert (tmp_path / "a" / "results" / "h200-2026-12-05.json").exists()
    # A result filed in the checkout (the default folder) is named from its root.
    filed = gpu_report.ROOT / "bench" / "results" / "h200-2026-12-05.json"
    assert gpu_report._shown(filed) == "bench/results/h200-2026-12-05.json"
    (tmp_path / "no-parts.json").write_text(json.dumps({"date": "d", "summary": {}}))
    with pytest.raises(SystemExit, match=r"no-parts\.json is no gpu_bench\.json"):
        _report(gpu_report, [str(tmp_path / "no-parts.json"), "--results-dir", str(tmp_path)])


def test_report_row_gives_host_syncs_cupy_first_and_a_zero_as_a_number(gpu_report) -> None:
    """The host synchronisations are CuPy's + torch's; a figure of 0 is 0.0, not n/a."""
    timed = {"events_per_s": 5.0, "wall_ms": {"p50": 1.0, "p99": 2.0}, "stage_ms": {},
             "other_ms": 0.0, "host_syncs": {"cupy": 3, "torch": 1}}  # fmt: skip
    parts = {"compile_bf16": {"batches": {"16": timed}}}
    text = gpu_report.markdown({"date": "2026-12-01", "summary": {}, "parts": parts}, "x.json")
    row = next(line for line in text.splitlines() if line.startswith("| compile_bf16 | 16 |"))
    assert row.endswith("| 0.0 | 3 + 1 |")


def test_report_gives_the_gnns_share_of_the_limit_and_bf16_parity_in_percent(gpu_report):
    """The GNN line: its share of the card's limit in percent, against the compiled reference
    (133 M edges/s where a run's figures predate the per-engine references); an engine
    without a reference figure says so. bf16 parity's efficiency change and flipped
    decisions are percentages (target 0.2%)."""
    g = {"edges_per_s": 50e6, "over_reference": 0.38, "of_limit": 0.25, "limit_ms": 0.5,
         "limit_bound_by": "memory", "limits_of": "H100"}  # fmt: skip
    configs = {"compile_bf16": {"gnn_batch16": g},
               "tensorrt_bf16": {"gnn_batch16": g | {"reference": None}}}  # fmt: skip
    parity = {"events": 4, "tracking_efficiency_change": -0.0012, "score_abs_diff_p99": 0.01,
              "edge_decisions_flipped_fraction": 0.0005}  # fmt: skip
    result = {"date": "2026-12-01", "summary": {"configs": configs},
              "parts": {"bf16_parity": parity}}  # fmt: skip
    text = gpu_report.markdown(result, "x.json")
    lines = text.splitlines()
    compiled = next(line for line in lines if "compile_bf16: 50.0 M edges/s" in line)
    assert "(0.38 of the 133.0 M of the reference, Interaction Network H=64" in compiled
    assert compiled.endswith(" 25.0% of the H100's limit for this graph (0.50 ms, memory bound).")
    trt = next(line for line in lines if "tensorrt_bf16: 50.0 M edges/s" in line)
    assert "(no reference figure for this engine)," in trt
    assert "tracking efficiency change -0.120% (target within 0.2%)" in text
    assert "decisions flipped 0.050%." in text


def test_report_files_where_told_says_so_and_refuses_other_json(tmp_path: Path) -> None:
    """The summary names the file written (``--results-dir``), and a JSON that is no
    gpu_bench result (another bench's) is one line, not a KeyError."""
    run = [sys.executable, str(ROOT / "bench" / "gpu_report.py")]
    h200 = ROOT / "bench" / "results" / "h200-2026-12-04.json"
    out = subprocess.run([*run, str(h200), "--results-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"Raw result: `{tmp_path / h200.name}`." in out.stdout
    other = ROOT / "bench" / "results" / "beam-spot-2026-12-01.json"
    out = subprocess.run([*run, str(other), "--results-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (out.returncode, out.stderr) == (
        1,
        f"gpu_report: {other} is no gpu_bench.json (no summary, parts)\n",
    )
