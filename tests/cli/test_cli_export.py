"""``streamtrk export``: the ONNX edge classifier."""

from cli_helpers import _run

from streamtrk.recon.model import default_model_path


def test_onnx_export_prints_one_line(tmp_path):
    out = _run("export", "--onnx", str(default_model_path()), "-o", str(tmp_path / "m.onnx"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and out.stdout.startswith(f"wrote {tmp_path / 'm.onnx'}")
    assert "for ONNX Runtime's CPU provider, intra_op_num_threads = 1" in out.stdout
    assert out.stderr == ""


def test_onnx_export_of_no_model_is_a_setting_refused(tmp_path):
    out = _run("export", "--onnx", str(tmp_path / "none"), "-o", str(tmp_path / "m.onnx"))
    assert out.returncode == 2  # as serve's and evaluate's --model
    assert out.stderr.startswith(f"streamtrk export: error: --onnx: no model at {tmp_path}/none")


def test_onnx_export_without_its_packages_says_which_extra(tmp_path, monkeypatch, capsys):
    """onnxscript is not installed with streamtrk alone: one line, not a traceback."""
    import sys

    from streamtrk.cli import main

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as where it is not installed
    args = ["export", "--onnx", str(default_model_path()), "-o", str(tmp_path / "m.onnx")]
    assert main(args) == 1
    assert capsys.readouterr().err == (
        "streamtrk export: error: the ONNX export needs onnxscript: pip install 'streamtrk[onnx]'\n"
    )
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_export_checks_its_output_first_and_writes_it_whole(tmp_path):
    """An output the export cannot write is refused before the export's seconds of work,
    in words (it failed after them with "[Errno 17] File exists"); one a full disk refuses
    (here past the process's file size limit, EFBIG, as ENOSPC) leaves no file cut short."""
    import resource

    model = str(default_model_path())
    (tmp_path / "file").write_text("")
    out = _run("export", "--onnx", model, "-o", str(tmp_path / "file" / "m.onnx"))
    assert out.returncode == 1
    assert out.stderr == (
        f"streamtrk export: error: cannot write {tmp_path / 'file' / 'm.onnx'}: "
        f"{tmp_path / 'file'} is a file, not a folder\n"
    )

    def small_files() -> None:  # the model is 400 kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))

    onnx = tmp_path / "m.onnx"
    out = _run("export", "--onnx", model, "-o", str(onnx), preexec_fn=small_files)
    assert out.returncode == 1 and f"cannot write {onnx}: File too large" in out.stderr
    assert not list(tmp_path.glob("m.onnx*"))


def test_onnx_export_refuses_to_write_over_a_file_of_the_model(tmp_path):
    """``export --onnx m -o m/weights.pt`` replaced the weights with the ONNX graph, exit 0:
    the model was gone."""
    import shutil

    model = tmp_path / "m"
    shutil.copytree(default_model_path(), model)
    before = {f.name: f.read_bytes() for f in model.iterdir()}
    for name in ("weights.pt", "card.toml"):
        out = _run("export", "--onnx", str(model), "-o", str(model / name))
        assert out.returncode == 2
        assert out.stderr == f"streamtrk export: error: {model / name} is an input too: " + (
            "the output would replace it\n"
        )
    assert {f.name: f.read_bytes() for f in model.iterdir()} == before
    assert _run("export", "--onnx", str(model), "-o", str(model / "m.onnx")).returncode == 0
