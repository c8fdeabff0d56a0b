import pytest

from tfnas.genotypes import DARTS_OPS, ENAS_OPS
from tfnas.space import DARTS_SPACE, ENAS_SPACE, CellSpace


def test_darts_space_has_fourteen_edges_in_reference_order():
    assert DARTS_SPACE.num_edges == 14
    assert DARTS_SPACE.edge_inputs()[:5] == [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert DARTS_SPACE.operations == DARTS_OPS


def test_enas_space_is_a_configuration():
    assert ENAS_SPACE.num_edges == 20 and ENAS_SPACE.operations == ENAS_OPS
    edges = [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 2), ("skip_connect", 0)] \
        + [("skip_connect", 1)] * 6
    # node 2 is consumed by node 3; all the others are loose ends
    assert ENAS_SPACE.concat_of(edges) == (3, 4, 5, 6)
    assert DARTS_SPACE.concat_of(edges[:8]) == (2, 3, 4, 5)


@pytest.mark.parametrize("kwargs", [
    dict(operations=("conv_9x9",)), dict(operations=()), dict(num_nodes=0),
    dict(concat="first"), dict(operations=("none", "none")),
])
def test_bad_spaces_are_rejected(kwargs):
    with pytest.raises(ValueError):
        CellSpace(**kwargs)


def test_round_trip():
    assert CellSpace.from_dict(ENAS_SPACE.to_dict()) == ENAS_SPACE
