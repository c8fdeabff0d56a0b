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
