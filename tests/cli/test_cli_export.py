"""``streamtrk export``: the ONNX edge classifier."""

from cli_helpers import _run

from streamtrk.recon.model import default_model_path


def test_onnx_export_prints_one_line(tmp_path):
    out = _run("export", "--onnx", str(default_model_path()), "-o", str(tmp_path / "m.onnx"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and out.stdout.startswith(f"wrote {tmp_path / 'm.onnx'}")
    assert out.stderr == ""
