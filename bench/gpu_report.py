"""Turn a ``bench/gpu_bench.py`` result into what the GPU issue asks to commit: the raw result
as ``bench/results/<gpu>-<date>.json`` (with the MU=200 ``end_to_end`` rows at its top) and
a Markdown summary for ``bench/RESULTS.md`` (printed, or written with ``--markdown``).

    python3 bench/gpu_report.py OUT/gpu_bench.json            # writes bench/results/h200-...
    python3 bench/gpu_report.py OUT/gpu_bench.json --markdown summary.md
    python3 bench/gpu_report.py OUT/gpu_bench.json --host-path OUT/host_path.json

The summary: versions and command; end to end per configuration and batch size (events/s,
p50, p99, stages, host synchronisations); the targets; each stage against docs/gpu.md's
reference figures; the GNN against the reference network and the GPU's limit; bf16 parity;
the kernels against CuPy array operations; the daemon; parts that failed, were skipped or
cut, or ran otherwise than asked; with ``--host-path``, ``bench/host_path.py``'s result of
the same run (kept in the results file as ``host_path``): the daemon's host-side work per
event on the device's host.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from streamtrk.recon.reconstructor import STAGES as CHAIN_STAGES

ROOT = Path(__file__).resolve().parents[1]
STAGES = (*CHAIN_STAGES, "other")


def results_name(result: dict[str, Any]) -> str:
    """``h200-2026-12-01.json`` for an NVIDIA H200 on that date (``cpu-...`` for dry runs)."""
    gpu = str(result["summary"].get("gpu") or "unknown")
    words = [w for w in re.split(r"[^a-z0-9]+", gpu.lower()) if w and w != "nvidia"]
    slug = words[0] if words else "unknown"
    return f"{slug}-{result['date'][:10]}.json"


def with_headline(result: dict[str, Any]) -> dict[str, Any]:
    """The raw result with ``gpu``, ``date`` and ``end_to_end`` (the issue's shape) first."""
    s = result["summary"]
    head = {"gpu": s.get("gpu"), "date": result["date"], "end_to_end": s.get("end_to_end", [])}
    return head | {k: v for k, v in result.items() if k not in head}


def _f(v: Any, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def markdown(result: dict[str, Any], results_file: str | Path) -> str:
    s, parts = result["summary"], result["parts"]
    info = parts.get("info", {})
    out = [
        f"### GPU chain: {s.get('gpu')}, {result['date']}",
        "",
        f"torch {info.get('torch')}, CUDA {info.get('cuda_runtime')}, CuPy {info.get('cupy')},"
        f" Python {info.get('python')}; model {info.get('model')}; {info.get('events')} events"
        f" of MU={info.get('mu')} ({_f(info.get('hits_per_event'), 0)} hits each).",
        f"Command: `{result.get('command')}`. Raw result: `{_shown(Path(results_file))}`.",
        "",
        "End to end (`Reconstructor.reconstruct`, host batching, upload and download included;"
        " stages in ms per batch, medians):",
        "",
        "| config | batch | events/s | p50 ms | p99 ms | " + " | ".join(STAGES) + " | host syncs |",
        "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in STAGES) + " | ---: |",
    ]
    for name, p in parts.items():
        for size, b in p.get("batches", {}).items() if isinstance(p, dict) else ():
            if "events_per_s" not in b:
                out.append(f"| {name} | {size} | {b.get('error') or b.get('skipped')} |")
                continue
            stages = b["stage_ms"] | {"other": b.get("other_ms")}
            syncs = b.get("host_syncs")
            sync_text = (
                "n/a" if not syncs or "error" in syncs else f"{syncs['cupy']} + {syncs['torch']}"
            )
            out.append(
                f"| {name} | {size} | {_f(b['events_per_s'])} | {_f(b['wall_ms']['p50'])} | "
                f"{_p99(b['wall_ms'])} | "
                + " | ".join(_f(stages.get(st)) for st in STAGES)
                + f" | {sync_text} |"
            )
    full = [
        f"{name} batch {size}: {b['gc_collections'][2]}"
        for name, p in parts.items()
        for size, b in (p.get("batches", {}).items() if isinstance(p, dict) else ())
        if b.get("gc_collections") and b["gc_collections"][2]
    ]
    out += [
        "",
        "Full garbage collections inside the timed batches (heap frozen): "
        + ("; ".join(full) if full else "none")
        + ".",
    ]
    rows_64 = [r["events_per_second"] for r in s.get("end_to_end", []) if r["batch"] == 64]
    best_64 = max((v for v in rows_64 if v is not None), default=None)
    daemon, d = s.get("daemon", {}), parts.get("daemon", {})
    out += [
        "",
        "Targets (each best in the configuration named): at batch 16, best "
        f"{_f(s.get('best_events_per_s_batch16'))} events/s"
        f" ({s.get('best_events_per_s_batch16_config') or 'n/a'}; target "
        f"{_f(s.get('target_events_per_s_batch16'), 0)}); at batch 64, "
        f"{_f(best_64)} (target 1,000); p99 at batch 1 "
        f"{_f(s.get('best_p99_ms_batch1'))} ms in `reconstruct`"
        f" ({s.get('best_p99_ms_batch1_config') or 'n/a'}), "
        f"{_f(daemon.get('latency_p99_ms_batch1'))} ms through the daemon "
        f"(of {_replies(d, 'replay_batch1')} replies) at "
        f"{_f(daemon.get('rate_hz_batch1'))} Hz (mean batch "
        f"{_f(daemon.get('mean_batch_events_batch1'), 2)} events; target "
        f"{_f(s.get('target_p99_ms_batch1'), 0)} ms).",
        "",
        "Each stage against docs/gpu.md's reference figures (ms per event; ratio below 1:"
        " faster than the reference; the references are of one event, a batched row is its"
        " batch's time over its events):",
        "",
        "| config | batch | stage | ours ms | reference | reference ms | ratio |",
        "| --- | ---: | --- | ---: | --- | ---: | ---: |",
    ]
    for r in s.get("against_reference", []):
        if r["config"] == "daemon":
            continue
        out.append(
            f"| {r['config']} | {r['batch']} | {r['stage']} | {_f(r['ms_per_event'], 2)} | "
            f"{r['reference']} | {_f(r['reference_ms'], 2)} | {_f(r['ratio'], 2)} |"
        )
    for r in s.get("against_reference", []):
        if r["config"] == "daemon":
            out += [
                "",
                f"Daemon through ZeroMQ as fast as taken: {_f(r['events_per_second'])} events/s,"
                f" {_f(r['ratio'], 2)} of the {_f(r['reference_per_second'], 0)} messages/s of"
                f" the reference ({r['reference']}).",
            ]
    for name, row in s.get("configs", {}).items():
        g = row.get("gnn_batch16")
        if g:
            limit = (
                f" {_f(100 * g['of_limit'])}% of the {g.get('limits_of', 'H200')}'s limit for"
                f" this graph ({_f(g['limit_ms'], 2)} ms, {g['limit_bound_by']} bound)."
                if "of_limit" in g
                else " (no datasheet limits for this GPU)."
            )
            what = g.get("reference", "Interaction Network H=64, 8 steps, torch.compile bf16")
            rate = g.get("reference_edges_per_s", 133e6)
            against = (
                f" ({_f(g['over_reference'], 2)} of the {_f(rate / 1e6)} M of the reference,"
                f" {what}: several times the work an edge of the shipped network, hidden 32"
                " and 6 steps)"
                if what
                else " (no reference figure for this engine)"
            )
            out.append(
                f"GNN stage at batch 16 (the network with its compaction, padding and DLPack),"
                f" {name}: {_f(g['edges_per_s'] / 1e6)} M edges/s{against}," + limit
            )
    parity = parts.get("bf16_parity", {})
    if "tracking_efficiency_change" in parity:
        out.append(
            f"bf16 against fp32 ({parity.get('events')} events, {parity.get('engine', 'eager')}"
            " engine): tracking efficiency change"
            f" {100 * parity['tracking_efficiency_change']:+.3f}% (target within 0.2%), score"
            f" difference p99 {parity['score_abs_diff_p99']:.2g}, decisions flipped"
            f" {100 * parity['edge_decisions_flipped_fraction']:.3f}%."
        )
    kernels = parts.get("kernels", {})
    sizes = [k for k, v in kernels.items() if isinstance(v, dict) and "search_ms" in v]
    if sizes:
        out += [
            "",
            "Kernels against CuPy array operations (ms; same results):",
            "",
            "| batch | search, arrays | kernels | triplet cuts, arrays | kernels"
            " | fit's GLS sums, arrays | kernel | same |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for k in sizes:
            v = kernels[k]
            same = v["same_edges"] and v["same_features"]
            same = same and v.get("same_mask", True) and v.get("same_gls", True)
            triplets = v.get("triplets_ms", {})  # absent without pruning
            gls = v.get("gls_ms", {})  # absent from runs before the fit's kernel
            out.append(
                f"| {k} | {_f(v['search_ms']['arrays'], 2)} | {_f(v['search_ms']['kernels'], 2)}"
                f" | {_f(triplets.get('arrays'), 2)} | {_f(triplets.get('kernels'), 2)}"
                f" | {_f(gls.get('arrays'), 2)} | {_f(gls.get('kernels'), 2)}"
                f" | {'yes' if same else 'NO'} |"
            )
    if "replay_100hz" in d:
        out += [
            "",
            f"Daemon (`{' '.join(d.get('serve_flags', []))}`,"
            f" {d.get('hits_messages', 'default hits messages')}): ready in"
            f" {_f(d.get('start_to_ready_s'))} s (the compiler's caches warm from the parts"
            " before it: not a cold start); as fast as taken"
            f" {_f(daemon.get('events_per_s_max_rate'))} events/s (its first"
            f" {_replies(d, 'replay_max_rate')} replies); at 100 Hz p50"
            f" {_f(daemon.get('latency_p50_ms_100hz'))} ms, p99"
            f" {_f(daemon.get('latency_p99_ms_100hz'))} ms (from when due"
            f" {_f(daemon.get('latency_from_schedule_p99_ms_100hz'))} ms, sends up to"
            f" {_f(daemon.get('send_lag_max_ms_100hz'))} ms late) of"
            f" {_replies(d, 'replay_100hz')} replies (mean batch"
            f" {_f(daemon.get('mean_batch_events_100hz'), 2)} events); at"
            f" {_f(daemon.get('rate_hz_batch1'))} Hz p50"
            f" {_f(daemon.get('latency_p50_ms_batch1'))} ms, p99"
            f" {_f(daemon.get('latency_p99_ms_batch1'))} ms (from when due"
            f" {_f(daemon.get('latency_from_schedule_p99_ms_batch1'))} ms) of"
            f" {_replies(d, 'replay_batch1')} replies (mean batch"
            f" {_f(daemon.get('mean_batch_events_batch1'), 2)} events); exit code"
            f" {d.get('exit_code')}.",
        ]
    if problems := _problems(parts):
        out += ["", "Failed, skipped, cut or not as asked:", "", *problems]
    return "\n".join(out) + "\n"


def _p99(ms: dict[str, float]) -> str:
    """A timed row's p99; of fewer than 100 timings, said to be about the largest."""
    n = ms.get("n")
    return _f(ms["p99"]) if n is None or n >= 100 else f"{_f(ms['p99'])} (of {n})"


def _replies(daemon: dict[str, Any], replay: str) -> str:
    """How many replies a daemon replay's latencies are of."""
    r = daemon.get(replay)
    return str(r.get("received", "?")) if isinstance(r, dict) else "?"


def _problems(parts: dict[str, Any]) -> list[str]:
    """A line for a GPU other than the H200, each part (and batch size) that failed, was
    skipped or cut by the step's time limit, each configuration that fell back (its engine,
    or CUDA graphs off or skipped for some graphs), each replay that lost events or ended
    otherwise than 0, and a daemon that served otherwise than asked (its ``/status`` engine
    note) or did not exit 0 when stopped."""
    out = []
    info = parts.get("info")
    if isinstance(info, dict) and info.get("device") == "cuda" and "H200" not in info["gpu"]:
        out.append(
            f"- info: the GPU is an {info['gpu']}, not the H200 of the targets and the"
            " reference figures: its ratios to them are not the issue's"
        )
    for name, p in parts.items():
        if not isinstance(p, dict):
            continue
        if why := p.get("error") or p.get("skipped") or p.get("interrupted"):
            out.append(f"- {name}: {why}")
        for size, row in (p.get("batches") or {}).items():
            if isinstance(row, dict) and (why := row.get("error") or row.get("skipped")):
                out.append(f"- {name} batch {size}: {why}")
        if p.get("fallback_reason"):
            out.append(f"- {name}: {p['fallback_reason']}")
        if p.get("cuda_graphs") and p.get("cudagraph_skips"):
            out.append(f"- {name}: {p['cudagraph_skips']} graph(s) run without CUDA graphs")
        for replay in ("replay_max_rate", "replay_100hz", "replay_batch1"):
            r = p.get(replay)
            if not isinstance(r, dict):
                continue
            if why := r.get("skipped") or r.get("error"):
                out.append(f"- {name} {replay}: {why}")
            elif r.get("missing") or r.get("errors") or r.get("exit_code"):
                out.append(
                    f"- {name} {replay}: {r.get('missing', '?')} missing, errors"
                    f" {r.get('errors') or 'none'}, exit code {r.get('exit_code')}"
                    " (its latencies are of the replies received)"
                )
        if p.get("exit_code"):  # the daemon's own, at its SIGTERM: a drain not done, a kill
            out.append(
                f"- {name}: exited with {p['exit_code']} when stopped (its log_tail says why)"
            )
        model = p.get("status_model")
        if isinstance(model, dict) and model.get("engine_note"):
            out.append(f"- {name} served: {model['engine_note']}")
        elif isinstance(model, str):  # /status not read: what it served is unknown
            out.append(f"- {name} /status: {model}")
    return out


LABELS = {
    "physics_edge_scores": "of which the edge-score histogram",
    "decode_compact": "decode of a compact message (instead of decode)",
}


def host_path_markdown(host: dict[str, Any]) -> str:
    """``bench/host_path.py``'s figures: microseconds per event by part, against the budgets."""
    parts = host["per_event_us"]
    zmq = host["zmq_tcp"]
    labels, total = LABELS, "host total"
    if host.get("device", "cpu") != "cpu":  # host_path waits for the copy it times
        labels = LABELS | {"batch_columns": "batch_columns (with the copy up and its wait)"}
        total = "host total (the copy up included)"
    out = [
        "",
        f"Host-side work per event (`bench/host_path.py`, {host['events']} events of MU="
        f"{host['mu']:g}, reconstruction on `{host.get('device', 'cpu')}`), microseconds:",
        "",
        "| part | us per event |",
        "| --- | --- |",
        *(f"| {labels.get(name, name)} | {_f(us, 0)} |" for name, us in parts.items()),
        f"| {total} | {_f(host['host_us_per_event'], 0)} |",
        "",
        "Share of the host's budget: "
        + ", ".join(f"{k} {_f(v, 2)}" for k, v in host["share_of_budget"].items())
        + ". "
        + (_zmq_sentence(zmq) if zmq else "ZeroMQ over TCP loopback: not measured (run cut)."),
    ]
    return "\n".join(out) + "\n"


def _zmq_sentence(zmq: dict[str, Any]) -> str:
    compact = zmq["hits_message_compact"]
    return (
        "ZeroMQ over TCP loopback: hits message"
        f" ({zmq['hits_message']['bytes']:,} bytes) {_f(zmq['hits_message']['messages_per_s'], 0)}"
        f" messages/s, compact ({compact['bytes']:,} bytes) {_f(compact['messages_per_s'], 0)}"
        f" messages/s, reference 1.6 MB message"
        f" {_f(zmq['reference_message']['messages_per_s'], 0)} messages/s."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("result", type=Path, help="gpu_bench.json of a run")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--markdown", type=Path, help="write the summary here instead of printing")
    ap.add_argument("--host-path", type=Path, help="host_path.json of the same run")
    args = ap.parse_args()
    result = json.loads(args.result.read_text())
    if not isinstance(result, dict) or "summary" not in result or "parts" not in result:
        raise SystemExit(f"gpu_report: {args.result} is no gpu_bench.json (no summary, parts)")
    host = None
    if args.host_path and not args.host_path.exists():  # its step cut or failed: not fatal
        print(f"gpu_report: no {args.host_path}: host-path figures left out", file=sys.stderr)
    elif args.host_path:
        host = json.loads(args.host_path.read_text())
        result["host_path"] = host
    filed = args.results_dir / results_name(result)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    filed.write_text(json.dumps(with_headline(result), indent=1) + "\n")
    text = markdown(result, filed) + ("" if host is None else host_path_markdown(host))
    if args.markdown:
        args.markdown.write_text(text)
    else:
        print(text, end="")


def _shown(path: Path) -> str:
    """``path`` as RESULTS.md names it: from the repository's root where it is inside."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    main()
