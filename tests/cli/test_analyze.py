"""``filterstats analyze``: formats, model errors, output checks, the printed table."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch

import filterstats as fs
from filterstats.cli import main
from tests.cli.helpers import ROOT, one_error_line, run, small_checkpoint


def test_analyze_checkpoint_formats_round_trip(tmp_path):
    checkpoint = small_checkpoint(tmp_path / "model.pt", 0)
    result = run("analyze", "model.pt", "--format", "csv", "--out", "model.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = fs.read_report(tmp_path / "model.csv")
    direct = fs.analyze(torch.load(checkpoint, weights_only=True), label="model.pt")
    assert [r.diversity for r in written.measured] == [r.diversity for r in direct.measured]
    table = run("analyze", "model.pt", "--kernel-size", "all", cwd=tmp_path)
    assert table.returncode == 0
    assert table.stdout.startswith("FilterReport: model.pt")


def test_demo_robust_table_matches_its_golden_file(tmp_path, golden):
    result = run("analyze", "demo:robust", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    golden.check("analyze_demo_robust", result.stdout)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.pt", "missing.pt"),
        ("nonsense:thing", "nonsense"),
        ("empty.pt", "empty"),
        ("page.pt", "HTML"),
        ("adir.pt", "directory"),
    ],
)
def test_bad_specs_give_one_line_and_exit_2(tmp_path, spec, message):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "page.pt").write_text("<!DOCTYPE html><html><body>quota exceeded</body></html>")
    (tmp_path / "adir.pt").mkdir()
    result = run("analyze", spec, "--out", "never.csv", "--format", "csv", cwd=tmp_path)
    assert result.returncode == 2
    assert message.lower() in one_error_line(result.stderr).lower()
    assert not (tmp_path / "never.csv").exists()


def test_bad_option_is_a_usage_error(tmp_path):
    result = run("analyze", "demo:robust", "--kernel-size", "big", cwd=tmp_path)
    assert result.returncode == 2
    assert "kernel size" in result.stderr


def test_trust_pickle_is_an_explicit_opt_in(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    torch.save(net, tmp_path / "whole.pt")  # a pickled module, not a state dict
    refused = run("analyze", "whole.pt", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--trust-pickle" in one_error_line(refused.stderr)
    assert "trust_pickle=True" not in refused.stderr  # the Python spelling is not the hint
    trusted = run("analyze", "whole.pt", "--trust-pickle", cwd=tmp_path)
    assert trusted.returncode == 0, trusted.stderr
    assert "FilterReport: whole.pt" in trusted.stdout
    assert "full pickle (--trust-pickle)" in trusted.stderr  # the log line names the option
    assert "trust_pickle=True" not in trusted.stderr


# ------------------------------------------------- trusted pickles of missing classes


def _pickle_of_a_class_in(tmp_path, module_name: str) -> None:
    """``net.pt``: a whole module of class ``module_name.Net``, whose code is then gone."""
    source = tmp_path / "code" / f"{module_name}.py"
    source.parent.mkdir()
    source.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 4, 3)\n"
    )
    sys.path.insert(0, str(source.parent))
    try:
        module = __import__(module_name)
        torch.save(module.Net(), tmp_path / "net.pt")
    finally:
        sys.path.remove(str(source.parent))
        sys.modules.pop(module_name, None)
    source.unlink()


def test_trusted_pickle_of_a_missing_module_names_the_class(tmp_path):
    _pickle_of_a_class_in(tmp_path, "gone_models")
    result = run("analyze", "net.pt", "--trust-pickle", cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result.stderr, alone=False)  # after the log line of the opt-in
    assert "gone_models.Net" in line and "must be importable" in line
    assert "model.state_dict()" in line


def test_trusted_pickle_of_a_missing_class_names_the_class(tmp_path):
    _pickle_of_a_class_in(tmp_path, "kept_models")
    (tmp_path / "code" / "kept_models.py").write_text("OTHER = 1\n")  # module there, class not
    path = os.pathsep.join([str(tmp_path / "code"), str(ROOT)])
    result = run("analyze", "net.pt", "--trust-pickle", cwd=tmp_path, env={"PYTHONPATH": path})
    assert result.returncode == 2
    line = one_error_line(result.stderr, alone=False)
    assert "kept_models.Net" in line and "must be importable" in line


def test_trusted_pickle_of_a_script_class_says_it_cannot_be_found(tmp_path):
    script = tmp_path / "save.py"
    script.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 4, 3)\n"
        "torch.save(Net(), 'net.pt')\n"
    )
    import subprocess

    subprocess.run([sys.executable, str(script)], cwd=tmp_path, check=True)
    result = run("analyze", "net.pt", "--trust-pickle", cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result.stderr, alone=False)
    assert "__main__.Net" in line and "script that saved" in line


# ------------------------------------------------- output paths, checked before any work


def _spy_on_loading(monkeypatch) -> list[str]:
    loaded: list[str] = []
    monkeypatch.setattr("filterstats.zoo.specs.load_model", lambda spec, **_: loaded.append(spec))
    return loaded


@pytest.mark.parametrize(
    ("out", "needle"),
    [
        ("adir", "is a directory"),
        ("nodir/r.csv", "does not exist"),
        ("afile/r.csv", "not a directory"),
    ],
)
def test_bad_output_file_is_refused_before_any_work(tmp_path, monkeypatch, capsys, out, needle):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    loaded = _spy_on_loading(monkeypatch)
    assert main(["analyze", "demo:robust", "--format", "csv", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and out in err[0], err
    assert loaded == []  # refused before the model was loaded


def test_unwritable_output_directory_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # chmod does not stop root (the CI user here), so the permission check itself is faked.
    monkeypatch.setattr(
        "os.access", lambda path, mode: Path(path) != locked and real_access(path, mode)
    )
    monkeypatch.chdir(tmp_path)
    loaded = _spy_on_loading(monkeypatch)
    assert main(["analyze", "demo:robust", "--out", "locked/r.txt"]) == 2
    err = capsys.readouterr().err
    assert "no permission to write into" in err and "locked" in err
    assert loaded == []


def test_parquet_without_out_is_refused_before_any_work(monkeypatch, capsys):
    loaded = _spy_on_loading(monkeypatch)
    assert main(["analyze", "demo:robust", "--format", "parquet"]) == 2
    assert "--format parquet needs --out" in capsys.readouterr().err
    assert loaded == []


def test_write_failure_names_the_output_not_a_temporary_file(tmp_path, monkeypatch, capsys):
    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pathlib.Path.write_text", full_disk)
    assert main(["analyze", "demo:robust", "--format", "csv", "--out", "r.csv"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "r.csv" in err
    assert ".tmp" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------- timm names


@pytest.fixture
def stub_timm(monkeypatch):
    """A stand-in ``timm`` that knows three architectures (the real one lives in the zoo venv)."""
    import filterstats.zoo

    stub = types.ModuleType("timm")
    stub.__version__ = "0.0-stub"
    known = ["resnet18", "resnet34", "resnet50"]
    stub.is_model = lambda name: name in known
    stub.list_models = lambda: list(known)

    def create_model(*args, **kwargs):
        raise AssertionError("an unknown name must be refused before timm builds anything")

    stub.create_model = create_model
    layers = types.ModuleType("timm.layers")
    layers.std_conv = types.ModuleType("timm.layers.std_conv")
    stub.layers = layers
    for name, module in (
        ("timm", stub),
        ("timm.layers", layers),
        ("timm.layers.std_conv", layers.std_conv),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "filterstats.zoo.timm", raising=False)
    monkeypatch.delattr(filterstats.zoo, "timm", raising=False)
    yield stub
    sys.modules.pop("filterstats.zoo.timm", None)  # the copy imported with the stub


def test_unknown_timm_model_is_one_line_with_close_names(stub_timm, capsys):
    assert main(["analyze", "timm:resnet19"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0] == (
        "filterstats: error: timm 0.0-stub has no model 'resnet19'; did you mean resnet18, "
        "resnet50, resnet34? timm.list_models() lists its 3 architectures (with wildcards: "
        "timm.list_models('*resnet*'))."
    )


def test_unknown_timm_model_with_a_tag_names_the_architecture(stub_timm):
    from filterstats.zoo.timm import create_model

    with pytest.raises(ValueError, match="has no model 'nosuchnet'; timm.list_models"):
        create_model("nosuchnet.a1_in1k")


@pytest.mark.zoo
def test_unknown_timm_model_in_the_zoo_environment(tmp_path, no_network):
    pytest.importorskip("timm")
    result = run("analyze", "timm:nosuchnet", cwd=tmp_path)
    assert result.returncode == 2
    assert "has no model 'nosuchnet'" in one_error_line(result.stderr)


@pytest.mark.zoo
def test_checkpoint_of_another_timm_model_is_one_short_line(tmp_path, no_network):
    timm = pytest.importorskip("timm")
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    result = run("analyze", "timm:resnet50@r18.pth", cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "does not fit timm's ResNet" in line and "keys missing from the file" in line
    assert "more" in line and len(line) < 1000  # counts and a few keys, never all of them


@pytest.mark.parametrize("value", ["2", "-0.1", "nan", "x"])
def test_bad_eps_is_a_usage_error_before_any_work(monkeypatch, capsys, value):
    loaded = _spy_on_loading(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        main(["analyze", "demo:robust", "--eps", value])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --eps: must be a number in [0, 1)" in last
    assert loaded == []


def test_nothing_measured_is_not_a_success(tmp_path, capsys):
    torch.save({"conv.weight": torch.randn(4, 3, 1, 1)}, tmp_path / "pointwise.pt")
    assert main(["analyze", str(tmp_path / "pointwise.pt"), "-q"]) == 1
    captured = capsys.readouterr()
    assert "skipped:" in captured.out  # the table still lists every conv with its reason
    (line,) = captured.err.strip().splitlines()
    assert "no layer of" in line and "kernel size (1, 1) is not (3, 3)" in line


def test_a_quantised_state_dict_is_measured_on_the_command_line(tmp_path, capsys):
    import torch.ao.quantization as tq

    net = torch.nn.Sequential(tq.QuantStub(), torch.nn.Conv2d(3, 8, 3), tq.DeQuantStub()).eval()
    net.qconfig = tq.get_default_qconfig("fbgemm")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = tq.prepare(net)
        prepared(torch.randn(4, 3, 8, 8))
        quantised = tq.convert(prepared)
    torch.save(quantised.state_dict(), tmp_path / "q.pt")
    assert main(["analyze", str(tmp_path / "q.pt"), "--format", "json", "-q"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["layer"], r["status"]) for r in rows] == [("1", "ok")]


def test_a_closed_pipe_is_not_an_error(tmp_path):
    import subprocess

    process = subprocess.Popen(
        [sys.executable, "-m", "filterstats", "demo", "--out", str(tmp_path / "demo"), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None
    process.stdout.readline()
    process.stdout.close()  # as `| head -1` does
    _, err = process.communicate(timeout=120)
    assert b"error" not in err, err
    assert b"Traceback" not in err
