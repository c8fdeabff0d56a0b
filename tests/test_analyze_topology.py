"""``analyze.py topology`` / ``analyze.py variants``: in-process through
``tfnas.cli.analyze.main``; a few subprocesses for exit codes, stderr and
the promise that TensorFlow is not imported."""

import json
import subprocess
import sys

import pytest

from tfnas.cli.analyze import main
from tfnas.genotypes import zoo_names
from tfnas.resolve import get_genotype

from conftest import REPO

FIVE = {"NASNet": (5.0, 2), "AmoebaNet": (4.0, 4), "ENAS": (5.0, 2), "DARTS_V2": (3.5, 3),
        "SNAS_MILD": (4.0, 2)}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_topology_json_every_zoo_genotype(capsys):
    code, out, err = run(capsys, "topology", "--json")
    assert code == 0 and err == ""
    rows = json.loads(out)
    assert [r["name"] for r in rows] == zoo_names()
    assert all(set(r) == {"name", "normal_width", "normal_depth", "reduce_width", "reduce_depth"}
               for r in rows)
    by_name = {r["name"]: r for r in rows}
    for name, (width, depth) in FIVE.items():
        assert (by_name[name]["normal_width"], by_name[name]["normal_depth"]) == (width, depth)


def test_topology_table_and_repeated_genotypes(capsys, tmp_path):
    repr_file = tmp_path / "mine.txt"
    repr_file.write_text(str(get_genotype("SNAS_MILD")))
    code, out, _ = run(capsys, "topology", "--genotype", "DARTS_V2", "--genotype", "DARTS_CONN1",
                       "--genotype", str(repr_file), "--genotype", get_genotype("ENAS").to_json())
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "normal", "width", "normal", "depth", "reduce", "width",
                                "reduce", "depth"]
    assert lines[2].split() == ["DARTS_V2", "3.5c", "3", "2.5c", "3"]
    assert lines[3].split()[:3] == ["DARTS_CONN1", "2.5c", "4"]
    assert lines[4].split()[:3] == ["mine", "4c", "2"]
    assert lines[5].split()[:3] == ["genotype4", "5c", "2"]


def test_topology_nodes_breakdown(capsys):
    code, out, _ = run(capsys, "topology", "--genotype", "DARTS_V2", "--json", "--nodes")
    row = json.loads(out)[0]
    assert [n["width"] for n in row["normal_nodes"]] == [1.0, 1.0, 1.0, 0.5]
    code, out, _ = run(capsys, "topology", "--genotype", "DARTS_V2", "--nodes")
    assert "DARTS_V2 normal cell" in out and "dil_conv_3x3(2)" in out


def test_topology_plot(capsys, tmp_path):
    code, out, _ = run(capsys, "topology", "--genotype", get_genotype("DARTS_V2").to_json(),
                       "--plot", str(tmp_path / "plots"), "--format", "svg")
    assert code == 0
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert written == ["figure1.svg", "genotype1.svg"]
    assert "diagrams written to" in out


def test_variants_conn_json_reproduces_the_test_vector(capsys):
    code, out, _ = run(capsys, "variants", "--genotype", "DARTS", "--kind", "conn",
                       "--seeds", "1-3", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["DARTS_CONN1", "DARTS_CONN2", "DARTS_CONN3"]
    assert [idx for _, idx in rows[0]["genotype"]["normal"]] == [1, 0, 1, 0, 1, 3, 4, 2]
    assert rows[0]["normal_width"] == 2.5 and rows[0]["kind"] == "conn"
    assert {"name", "label", "kind", "genotype", "normal_width", "normal_depth",
            "reduce_width", "reduce_depth"} == set(rows[0])


def test_variants_ops_table_and_rewirings(capsys, tmp_path):
    code, out, _ = run(capsys, "variants", "--genotype", "ENAS", "--kind", "ops", "--seeds", "7,9")
    assert code == 0 and "ENAS_OPS7" in out and "ENAS_OPS9" in out
    code, out, _ = run(capsys, "variants", "--genotype", "NASNet", "--kind", "widest", "--json",
                       "--save", str(tmp_path))
    row = json.loads(out)[0]
    assert row["name"] == "NASNet_WIDEST"
    assert row["genotype"] == get_genotype("NASNet_ADAPT").to_dict()
    assert get_genotype("NASNet_ADAPT") == __import__("tfnas").resolve_genotype(
        str(tmp_path / "NASNet_WIDEST.json"))


def test_variants_stratified(capsys, tmp_path):
    code, out, _ = run(capsys, "variants", "--stratified", "--per-band", "3", "--seed", "0",
                       "--json")
    rows = json.loads(out)
    assert [r["label"] for r in rows] == [f"C{i}" for i in range(1, 13)]
    assert [r["normal_width"] for r in rows] == [2.0] * 3 + [2.5] * 3 + [3.0] * 3 + [3.5] * 3
    code, out, _ = run(capsys, "variants", "--stratified", "--per-band", "1", "--bands", "1,4",
                       "--plot", str(tmp_path))
    assert code == 0 and out.splitlines()[2].startswith("C1")
    assert (tmp_path / "variants.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, message", [
    (["topology", "--genotype", "NoSuchNet"], "error: unknown genotype 'NoSuchNet'"),
    (["topology", "--genotype", "Genotype(normal=[('conv_9x9', 0)])"], "error: "),
    (["topology", "--genotype", "{\"normal\": [[\"sep_conv_3x3\", 2], [\"sep_conv_3x3\", 0]], \"normal_concat\": [2], "
      "\"reduce\": [[\"sep_conv_3x3\", 0], [\"sep_conv_3x3\", 1]], \"reduce_concat\": [2]}"],
     "error: normal cell, edge 0 (node 2): input index 2 points at itself"),
    (["topology", "--layers", "0"], "error: --layers must be at least 1"),
    (["variants", "--seeds", "5-1"], "error: bad seed list '5-1'"),
    (["variants", "--genotype", "ENAS", "--stratified", "--bands", "2,5.5"], "impossible"),
    (["variants", "--stratified", "--bands", "two"], "error: bad --bands"),
    (["variants", "--stratified", "--kind", "ops"], "error: --stratified draws connection"),
    (["variants", "--per-band", "0", "--stratified"], "error: --per-band must be at least 1"),
    (["variants", "--seeds", "99999999999"], "out of range"),
])
def test_bad_input_is_one_error_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_bad_plot_target(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "topology", "--genotype", "DARTS", "--plot", str(blocker / "sub"))
    assert code == 2 and err.startswith("error: cannot create plot directory")


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["variants", "--kind", "both"])
    assert info.value.code == 2
    assert "error: argument --kind" in capsys.readouterr().err


# -- real processes (each costs a Python start) --------------------------------

def _script(*args):
    return subprocess.run([sys.executable, "-X", "importtime", str(REPO / "analyze.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_script_json_without_tensorflow():
    result = _script("topology", "--json", "--genotype", "DARTS_V2")
    assert result.returncode == 0
    assert json.loads(result.stdout)[0]["normal_width"] == 3.5
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras")]


def test_script_bad_input_exit_code_and_stderr():
    result = _script("variants", "--genotype", "DARTS_CONNx")
    assert result.returncode == 2 and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == ["error: unknown genotype 'DARTS_CONNx'; known: " + ", ".join(zoo_names(True))
                      + " and their variants <NAME>_CONN<k>, <NAME>_OPS<k>, <NAME>_WIDEST, "
                        "<NAME>_DEEPEST"]
