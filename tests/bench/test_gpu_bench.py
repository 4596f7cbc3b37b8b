"""The device run's script, dry-run on the CPU: every part it reaches runs and the JSON has
the shape the GPU issue asks for (a failure here would cost a device session)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench_scripts import bench_script

from streamtrk.recon.gnn import GNNConfig

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
    result: dict[str, Any] = {
        "date": "2026-12-05 10:00:00 UTC",
        "summary": {"gpu": "NVIDIA H100 80GB HBM3"},
    }
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


def test_a_wide_network_in_fp32_is_bound_by_fp32_compute() -> None:
    """The limit is of the precision that ran: a network with many FLOPs an edge, in fp32
    (67 TFLOPS on the H200, no TF32), is compute-bound, its limit in milliseconds, and
    ``of_limit`` the limit's share of the time taken."""
    gpu_bench = bench_script("gpu_bench")
    seconds = 0.1
    wide = GNNConfig(hidden=256, edge_hidden=256)
    f = gpu_bench.gnn_figures(wide, "compile", "fp32", 1e6, 1e5, seconds, "NVIDIA H200")
    flops = f["achieved_tflops"] * 1e12 * seconds
    assert f["limit_bound_by"] == "compute"
    assert f["limit_ms"] == pytest.approx(flops / 67e12 * 1000)
    assert f["of_limit"] == pytest.approx(f["limit_ms"] / 1000 / seconds)


def test_gnn_traffic_of_one_step_and_of_half_precision() -> None:
    """A one-step network has no hit update (no message sums, no hit state written back):
    an edge reads and writes its state and reads two indices and two gathered projections
    (4 he act + 16 bytes), plus its 6 inputs and its score; a hit reads its state and
    writes two projections, plus its 3 inputs. bf16 moves 2 bytes an activation, not 4."""
    gpu_bench = bench_script("gpu_bench")
    one_step = GNNConfig(hidden=8, edge_hidden=8, steps=1)
    assert gpu_bench.gnn_traffic_bytes(one_step, 2) == (
        4 * 8 * 2 + 16 + 6 * 4 + 4,
        8 * 2 + 2 * 8 * 2 + 3 * 4,
    )
    cfg = GNNConfig()
    fp32, bf16 = (
        gpu_bench.gnn_figures(cfg, "eager", p, 1e6, 1e5, 1e-3, "NVIDIA H200")
        for p in ("fp32", "bf16")
    )
    traffic = "achieved_tb_per_s_at_least_traffic"
    assert bf16[traffic] < fp32[traffic]


def test_a_memory_bound_limit_scales_with_the_cards_bandwidth() -> None:
    """The H100 PCIe moves 2.0 TB/s (the SXM 3.35, the H200 4.8): a memory-bound graph's
    limit scales by the ratio."""
    from streamtrk.recon.model import load_model, shipped_model_path

    gpu_bench = bench_script("gpu_bench")
    cfg = load_model(shipped_model_path())[0].config
    h200, pcie = (
        gpu_bench.gnn_figures(cfg, "compile", "bf16", 1e6, 1e5, 1e-3, gpu)
        for gpu in ("NVIDIA H200", "NVIDIA H100 PCIe")
    )
    assert pcie["limit_bound_by"] == "memory"
    assert pcie["limit_ms"] == pytest.approx(h200["limit_ms"] * 4.8 / 2.0)


def test_a_part_over_budget_is_skipped_and_not_run(tmp_path: Path) -> None:
    """A part needing more seconds than are left is not run: it is recorded as skipped, with
    the seconds left and needed; the parts after it that fit still run."""
    gpu_bench = bench_script("gpu_bench")
    bench = gpu_bench.Bench(tmp_path, budget_s=30)
    ran: list[str] = []

    def run(name: str) -> dict[str, Any]:
        ran.append(name)
        return {"ran": name}

    bench.part("long", 60, lambda: run("long"))
    bench.part("short", 1, lambda: run("short"))
    assert ran == ["short"]
    parts = json.loads((tmp_path / "gpu_bench.json").read_text())["parts"]
    assert parts["long"] == {"skipped": "time budget: 30 s left, the part needs ~60 s"}
    assert parts["short"]["ran"] == "short"
    assert 0 < bench.left() <= 30


def test_a_failing_part_keeps_only_its_own_results(tmp_path: Path) -> None:
    """Each part starts with nothing measured: a part that fails records its error and its
    traceback, not what the part before it had put in ``bench.partial``."""
    gpu_bench = bench_script("gpu_bench")
    bench = gpu_bench.Bench(tmp_path, budget_s=100)

    def measured() -> dict[str, Any]:
        bench.partial = {"replay_max_rate": {"events_per_second": 9.0}}
        return dict(bench.partial)

    def failing() -> dict[str, Any]:
        raise RuntimeError("boom")

    bench.part("measured", 0, measured)
    bench.part("failing", 0, failing)
    failed = json.loads((tmp_path / "gpu_bench.json").read_text())["parts"]["failing"]
    assert set(failed) == {"error", "traceback", "part_seconds"}
    assert "RuntimeError: boom" in failed["traceback"]


def test_a_cut_part_ignores_a_second_sigint(tmp_path: Path) -> None:
    """``timeout`` signals the process and its group: once SIGINT has cut a part, SIGINT is
    ignored, lest a second one cut the saving of what was measured."""
    gpu_bench = bench_script("gpu_bench")
    bench = gpu_bench.Bench(tmp_path, budget_s=100)

    def cut() -> dict[str, Any]:
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with pytest.raises(KeyboardInterrupt):
            bench.part("cut", 0, cut)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def _timed(events_per_s: float, p50: float, p99: float) -> dict[str, Any]:
    wall = {"p50": p50, "p90": p99, "p99": p99, "max": p99 + 1, "mean": p50 + 0.5, "n": 100}
    return {"events_per_s": events_per_s, "wall_ms": wall}


def test_the_latency_replay_runs_at_half_the_daemon_configs_batch1_rate() -> None:
    """Half the events/s at batch 1 of the daemon's own configuration (not a faster one's),
    else of the slowest measured; within 0.1 to 100 Hz; 10 Hz when none was measured."""
    gpu_bench = bench_script("gpu_bench")
    parts = {
        "info": {"mu": 200.0},
        "compile_bf16": {"batches": {"1": _timed(900.0, 1.0, 2.0)}},
        "eager_fp32": {"batches": {"1": _timed(60.0, 16.0, 20.0)}},
    }
    assert gpu_bench.batch1_rate_hz(parts, "eager_fp32") == 30.0
    assert gpu_bench.batch1_rate_hz(parts, "eager_bf16") == 30.0  # not measured: the slowest
    assert gpu_bench.batch1_rate_hz(parts, "compile_bf16") == 100.0
    slow = {"eager_fp32": {"batches": {"1": _timed(0.05, 1.0, 2.0)}}}
    assert gpu_bench.batch1_rate_hz(slow, "eager_fp32") == 0.1
    assert gpu_bench.batch1_rate_hz({"info": {}, "kernels": {}}, "eager_fp32") == 10.0


def test_summary_rows_and_bests_are_each_of_their_own_figure() -> None:
    """``end_to_end``: a row per configuration and batch size with its own events/s, p50
    and p99; the best events/s at batch 16 is the highest, the best p99 at batch 1 the
    lowest, each with its configuration; the daemon's figures are of their own replays."""
    gpu_bench = bench_script("gpu_bench")
    kinds = {"cuda_graphs": False}
    parts = {
        "info": {"device": "cuda", "gpu": "NVIDIA H200", "mu": 200.0},
        "eager_fp32": kinds | {"engine": "eager", "precision": "fp32", "batches": {
            "1": _timed(50.0, 18.0, 30.0), "16": _timed(300.0, 50.0, 60.0)}},
        "compile_bf16": kinds | {"engine": "compile", "precision": "bf16", "batches": {
            "1": _timed(100.0, 8.0, 12.0), "16": _timed(900.0, 15.0, 20.0)}},
        "daemon": {
            "replay_max_rate": {"events_per_second": 700.0, "mean_batch_events": 9.0},
            "replay_100hz": {"latency_p50_ms": 9.0, "latency_p99_ms": 14.0,
                             "mean_batch_events": 1.2, "offered_rate_hz": 100.0},
            "replay_batch1": {"offered_rate_hz": 25.0, "latency_p50_ms": 7.0,
                              "latency_p99_ms": 11.0, "mean_batch_events": 1.0},
        },
    }  # fmt: skip
    s = gpu_bench.summary(parts)
    rows = s["end_to_end"]
    assert rows[0] == {
        "mu": 200.0, "batch": 1, "engine": "eager", "precision": "fp32", "cuda_graphs": False,
        "events_per_second": 50.0, "p50_ms": 18.0, "p99_ms": 30.0, "host_syncs": None,
    }  # fmt: skip
    figures = [(r["batch"], r["events_per_second"], r["p50_ms"], r["p99_ms"]) for r in rows]
    assert figures == [
        (1, 50.0, 18.0, 30.0), (16, 300.0, 50.0, 60.0), (1, 100.0, 8.0, 12.0),
        (16, 900.0, 15.0, 20.0),
    ]  # fmt: skip
    assert (s["best_events_per_s_batch16"], s["best_events_per_s_batch16_config"]) == (
        900.0,
        "compile_bf16",
    )
    assert (s["best_p99_ms_batch1"], s["best_p99_ms_batch1_config"]) == (12.0, "compile_bf16")
    assert s["configs"]["eager_fp32"]["p99_ms_batch1"] == 30.0
    d = s["daemon"]
    assert (d["events_per_s_max_rate"], d["latency_p50_ms_100hz"], d["latency_p99_ms_100hz"]) == (
        700.0,
        9.0,
        14.0,
    )
    assert (d["mean_batch_events_100hz"], d["rate_hz_batch1"], d["mean_batch_events_batch1"]) == (
        1.2,
        25.0,
        1.0,
    )


def test_against_reference_is_per_event_and_ours_over_theirs() -> None:
    """Each stage's milliseconds per event (the batch's over its size) over the reference's
    (graph 15 ms, tracks 0.8 ms; the GNN's: our edges at its engine's reference edges/s);
    the daemon's events/s over ZeroMQ's 2,200 messages/s."""
    gpu_bench = bench_script("gpu_bench")
    batch16 = {
        "stage_ms": {"graph": 48.0, "gnn": 32.0, "tracks": 3.2},
        "edges_per_batch": 16 * 133e3,
    }
    parts = {"compile_bf16": {"engine": "compile", "batches": {"16": batch16}}}
    rows = {r["stage"]: r for r in gpu_bench.against_reference(parts, 1100.0)}
    assert rows["graph"]["ms_per_event"] == 3.0
    assert rows["graph"]["ratio"] == pytest.approx(3.0 / 15.0)
    assert rows["tracks"]["ratio"] == pytest.approx(0.2 / 0.8)
    assert rows["gnn"]["reference_ms"] == pytest.approx(1.0)  # 133k edges at 133M edges/s
    assert rows["gnn"]["ratio"] == pytest.approx(2.0)
    [daemon] = [r for r in rows.values() if r["config"] == "daemon"]
    assert daemon["ratio"] == pytest.approx(0.5)


def test_batches_cycle_through_the_events() -> None:
    """The k-th batch of size s holds events k*s to k*s + s - 1, modulo their number."""
    gpu_bench = bench_script("gpu_bench")
    events = ["a", "b", "c", "d", "e"]
    assert [gpu_bench.batch(events, 2, k) for k in range(4)] == [
        ["a", "b"], ["c", "d"], ["e", "a"], ["b", "c"],
    ]  # fmt: skip
    assert gpu_bench.batch(events, 1, 7) == ["c"]


def test_ms_stats_are_percentiles_of_the_timings_in_ms() -> None:
    """Milliseconds: p50, p90 and p99 percentiles (not the mean), the largest, the mean, n."""
    gpu_bench = bench_script("gpu_bench")
    seconds = [i / 1000 for i in range(1, 100)] + [1.0]  # 1 to 99 ms, and one of a second
    assert gpu_bench.ms_stats(seconds) == pytest.approx(
        {"p50": 50.5, "p90": 90.1, "p99": 108.01, "max": 1000.0, "mean": 59.5, "n": 100}
    )


def test_dry_run_timings_are_of_the_timed_batches(device_dry_run: tuple[str, Path]) -> None:
    """Each batch size's events/s is its events over the time its timed batches took (its
    size over the mean wall), its per-event ms the median wall over its size; batch 1 is
    timed 100 times (a p99 of 100); the transfers are timed at batch 1 (16 batches) and at
    the events' number (2: 8 batches), each size's first batch untimed."""
    result = json.loads((device_dry_run[1] / "gpu_bench.json").read_text())
    batches = result["parts"]["eager_fp32"]["batches"]
    for size, timed in batches.items():
        wall = timed["wall_ms"]
        assert timed["events_per_s"] == pytest.approx(int(size) * 1000 / wall["mean"]), size
        assert timed["per_event_ms"] == pytest.approx(wall["p50"] / int(size)), size
        assert wall["n"] == timed["iterations"], size
        assert timed["other_ms"] >= 0, size  # the median of each batch's own rest
    assert batches["1"]["iterations"] == 100
    transfers = result["parts"]["transfers"]["by_batch"]
    assert {size: t["batches"] for size, t in transfers.items()} == {"1": 16, "2": 8}


def test_dry_run_daemon_replays_as_asked(device_dry_run: tuple[str, Path]) -> None:
    """The daemon serves batches of up to 16 events with no queue delay; its replays: as
    fast as taken and at 100 Hz, four passes over the recording (events queued up are served
    in batches of more than one); the latency replay in 2 to 6 passes; each replay's exit
    code."""
    result = json.loads((device_dry_run[1] / "gpu_bench.json").read_text())
    daemon = result["parts"]["daemon"]
    flags = daemon["serve_flags"]
    assert flags[flags.index("--max-queue-delay-ms") + 1] == "0"
    assert flags[flags.index("--max-batch-events") + 1] == "16"
    n = daemon["recording_events"]
    fast, at_100, single = (daemon[r] for r in ("replay_max_rate", "replay_100hz", "replay_batch1"))
    assert fast["sent"] == at_100["sent"] == 4 * n
    assert at_100["offered_rate_hz"] == 100.0
    assert fast["mean_batch_events"] > 1
    assert single["sent"] in range(2 * n, 6 * n + 1, n)
    assert [r["exit_code"] for r in (fast, at_100, single)] == [0, 0, 0]
