import pytest

from tfnas.cli.common import UsageError, parse_seed_range, run_cli
from tfnas.genotypes import GenotypeError


def test_seed_ranges():
    assert parse_seed_range("1-3") == [1, 2, 3]
    assert parse_seed_range("1,4, 7-8") == [1, 4, 7, 8]
    for bad in ("", "3-1", "a", "1-b"):
        with pytest.raises(UsageError):
            parse_seed_range(bad)


def test_run_cli_maps_bad_input_to_exit_2(capsys):
    def main(argv):
        raise GenotypeError("normal cell, edge 3: unknown operation 'x'\nmore detail")
    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert err == "error: normal cell, edge 3: unknown operation 'x'\n"


def test_run_cli_lets_bugs_through():
    def main(argv):
        raise ZeroDivisionError
    with pytest.raises(ZeroDivisionError):
        run_cli(main, [])


def test_run_cli_success_codes():
    assert run_cli(lambda argv: None, []) == 0
    assert run_cli(lambda argv: 3, []) == 3


@pytest.mark.parametrize("command, argv, named, unnamed", [
    ("train", ["--lr", "0.1", "--early-crop", "24", "--no-auxiliary", "--epochs", "3"],
     ["--lr", "--early-crop", "--auxiliary/--no-auxiliary"], ["--epochs"]),
    ("search", ["--order", "2", "--layers", "3", "--epochs", "3"], ["--order", "--layers"], ["--epochs"]),
])
def test_resume_names_every_flag_it_would_ignore(command, argv, named, unnamed, tmp_path, capsys):
    """--resume uses the stored config: a changed hyper-parameter is an error
    naming it, not silently dropped; the flags that may change pass."""
    import importlib
    cli = importlib.import_module(f"tfnas.cli.{command}")
    assert cli.main(["--out", str(tmp_path), "--resume", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resume continues the") and "\n" not in err
    ignored = err.split("; drop ", 1)[1].split(" (only", 1)[0].split(", ")
    assert ignored == sorted(named) and not set(unnamed) & set(ignored)
    # with only the flags that may change, the next complaint is the missing run
    assert cli.main(["--out", str(tmp_path), "--resume", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "continues the" not in err and "config.json not found" in err
