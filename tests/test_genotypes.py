"""Genotypes: zoo, round trips, validation errors, parsing without eval."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfnas.genotypes import (
    DARTS_OPS, DARTS_OPS_NO_NONE, KNOWN_OPS, Cell, Genotype, GenotypeError, parse_genotype, zoo_names,
)
from tfnas.resolve import get_genotype, resolve_genotype

ZOO = zoo_names()
DARTS_V2_REPR = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))")


def test_zoo_equals_published_file(published_json):
    published = json.loads(published_json.read_text())
    assert list(published) == ZOO
    for name, data in published.items():
        assert get_genotype(name).to_dict() == data
        assert get_genotype(name).name == name


def test_darts_is_an_alias_of_darts_v2():
    assert get_genotype("DARTS") == get_genotype("DARTS_V2")
    assert "DARTS" in zoo_names(include_aliases=True) and "DARTS" not in ZOO


def test_operation_lists():
    assert len(DARTS_OPS) == 8 and DARTS_OPS[0] == "none"
    assert DARTS_OPS_NO_NONE == DARTS_OPS[1:]
    assert {"sep_conv_7x7", "conv_7x1_1x7"} <= KNOWN_OPS


@pytest.mark.parametrize("name", ZOO)
def test_round_trips(name):
    genotype = get_genotype(name)
    as_json = genotype.to_json()
    as_repr = genotype.to_repr()
    assert parse_genotype(as_json) == genotype
    assert Genotype.from_dict(json.loads(as_json)) == genotype
    assert parse_genotype(as_repr) == genotype
    assert str(parse_genotype(str(genotype))) == str(genotype) == as_repr
    assert parse_genotype(parse_genotype(as_repr).to_json()).to_dict() == genotype.to_dict()


def test_parses_the_repr_darts_prints():
    parsed = parse_genotype(DARTS_V2_REPR)
    assert parsed == get_genotype("DARTS_V2")
    assert parsed.normal_concat == (2, 3, 4, 5)
    # Positional fields and line breaks too.
    positional = "Genotype(\n  [('skip_connect', 0), ('skip_connect', 1)], [2],\n" \
                 "  [('max_pool_3x3', 0), ('max_pool_3x3', 1)], [2])"
    assert parse_genotype(positional).normal == (("skip_connect", 0), ("skip_connect", 1))


def test_genotype_is_immutable_and_hashable():
    g = get_genotype("DARTS_V2")
    with pytest.raises(AttributeError):
        g.normal = ()
    assert len({g, get_genotype("DARTS")}) == 1


def test_cell_view():
    cell = get_genotype("DARTS_V2").cell("normal")
    assert cell.num_nodes == 4
    assert cell.node_inputs(5) == (("skip_connect", 0), ("dil_conv_3x3", 2))
    assert get_genotype("AmoebaNet").cell("normal").loose_ends() == (4, 5, 6)


def _darts_dict():
    return get_genotype("DARTS_V2").to_dict()


def _error(data_or_text):
    with pytest.raises(GenotypeError) as info:
        if isinstance(data_or_text, str):
            parse_genotype(data_or_text)
        else:
            Genotype.from_dict(data_or_text)
    return str(info.value)


def _with(kind, edge, pair=None, **fields):
    data = _darts_dict()
    if pair is not None:
        data[kind][edge] = pair
    data.update(fields)
    return data


@pytest.mark.parametrize("data, expected", [
    (_with("normal", 3, ["conv_9x9", 1]), ["normal cell", "edge 3", "unknown operation 'conv_9x9'"]),
    (_with("reduce", 4, ["max_pool_3x3", 4]), ["reduce cell", "edge 4", "node 4", "points at itself"]),
    (_with("normal", 2, ["sep_conv_3x3", 5]), ["normal cell", "edge 2", "a later node"]),
    (_with("normal", 1, ["sep_conv_3x3", -1]), ["normal cell", "edge 1", "negative input index"]),
    (_with("normal", 1, ["sep_conv_3x3", "1"]), ["normal cell", "edge 1", "pair"]),
    (_with("reduce", 0, ["max_pool_3x3"]), ["reduce cell", "edge 0", "pair"]),
    (_with("normal", 0, ["sep_conv_3x3", True]), ["normal cell", "edge 0", "pair"]),
    ({**_darts_dict(), "normal": _darts_dict()["normal"][:7]}, ["normal cell", "7 edges", "exactly 2"]),
    ({**_darts_dict(), "normal": []}, ["normal cell", "no edges"]),
    ({**_darts_dict(), "normal_concat": []}, ["normal cell", "empty concat"]),
    ({**_darts_dict(), "reduce_concat": [2, 6]}, ["reduce cell", "concat entry 6", "out of range"]),
    ({**_darts_dict(), "reduce_concat": [1, 2]}, ["reduce cell", "concat entry 1", "out of range"]),
    ({**_darts_dict(), "normal_concat": [2, 3, 3]}, ["normal cell", "duplicate concat entry 3"]),
    ({**_darts_dict(), "normal_concat": [2, "x"]}, ["normal_concat", "node indices"]),
    ({k: v for k, v in _darts_dict().items() if k != "reduce"}, ["missing reduce"]),
    ([1, 2], ["JSON object"]),
])
def test_validation_errors_name_cell_edge_and_problem(data, expected):
    message = _error(data)
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize("text, expected", [
    ("", "empty"),
    ("   ", "empty"),
    ("{not json", "invalid genotype JSON"),
    ("Genotype(normal=[('sep_conv_3x3', 0)", "cannot parse genotype"),
    ("[1, 2, 3]", "expected JSON or Genotype"),
    ("Genotype(normal=[], normal_concat=[2], reduce=[], reduce_concat=[2], extra=1)", "unknown field 'extra'"),
    ("Genotype(1, 2, 3, 4, 5)", "takes 4 fields"),
    ("Genotype(normal=[('a', 0)], normal=[('a', 0)])", None),  # Python itself rejects repeated keywords
    ("Genotype(normal=[('sep_conv_3x3', 0.5)])", "normal cell, edge 0"),
    ("Genotype(normal=[('sep_conv_3x3', 0)] * 8)", "normal cell"),
    ("Genotype(normal_concat=range(2, 6, 0))", "normal_concat"),
    ("Genotype(normal_concat=range(2, 10 ** 9))", "normal_concat"),
    ("\x00", "cannot parse"),
    ("{" * 100_000, "invalid genotype JSON"),
    ("[" * 100_000, "cannot parse"),
])
def test_malformed_text(text, expected):
    message = _error(text)
    if expected:
        assert expected in message, message


@pytest.mark.parametrize("attack", [
    "__import__('os').system('touch {sentinel}')",
    "Genotype(normal=__import__('os').system('touch {sentinel}'), normal_concat=[2], "
    "reduce=[], reduce_concat=[2])",
    DARTS_V2_REPR.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', __import__('os').system('touch {sentinel}'))"),
    "Genotype(normal=[(open('{sentinel}', 'w').write('x'), 0)])",
    "(lambda: __import__('os').system('touch {sentinel}'))()",
])
def test_code_is_never_executed(attack, tmp_path):
    sentinel = tmp_path / "executed"
    message = _error(attack.format(sentinel=sentinel))
    assert not sentinel.exists()
    assert "unsupported expression" in message or "expected JSON or Genotype" in message
    if "dil_conv_3x3" in attack:
        assert "normal cell, edge 7" in message


def test_cell_constructor_validates_directly():
    with pytest.raises(GenotypeError, match="edge 1"):
        Cell((("sep_conv_3x3", 0), ("sep_conv_3x3",)), (2,), kind="normal")
    with pytest.raises(GenotypeError, match="must be lists"):
        Cell(5, (2,))


def test_resolve_genotype_every_form(tmp_path):
    darts = get_genotype("DARTS_V2")
    json_file = tmp_path / "mine.json"
    json_file.write_text(darts.to_json())
    repr_file = tmp_path / "mine.txt"
    repr_file.write_text(DARTS_V2_REPR + "\n")
    search_output = tmp_path / "search.json"
    search_output.write_text(json.dumps({"name": "searched", "genotype": darts.to_dict()}))
    search_repr = tmp_path / "search_repr.json"
    search_repr.write_text(json.dumps({"genotype": darts.to_repr()}))
    for spec in ("DARTS_V2", "DARTS", str(json_file), str(repr_file), darts.to_json(),
                 DARTS_V2_REPR, str(search_output), str(search_repr)):
        assert resolve_genotype(spec) == darts, spec
    assert resolve_genotype(str(json_file)).name == "mine"
    assert resolve_genotype(str(search_output)).name == "searched"
    assert resolve_genotype("DARTS_CONN1").name == "DARTS_CONN1"
    assert resolve_genotype(darts) is darts


def test_resolve_genotype_errors(tmp_path):
    with pytest.raises(GenotypeError, match="unknown genotype 'NoSuchNet'"):
        resolve_genotype("NoSuchNet")
    with pytest.raises(GenotypeError, match="unknown genotype 'Foo_CONN1'"):
        resolve_genotype("Foo_CONN1")
    bad = tmp_path / "bad.json"
    bad.write_text('{"normal": [["conv_9x9", 0]]}')
    with pytest.raises(GenotypeError, match="bad.json"):
        resolve_genotype(str(bad))
    with pytest.raises(GenotypeError, match="not a known name"):
        resolve_genotype("./missing/file.json")
    with pytest.raises(GenotypeError, match="empty"):
        resolve_genotype("  ")


# -- property-based -----------------------------------------------------------

def _parses_or_genotype_error(text):
    try:
        genotype = parse_genotype(text)
    except GenotypeError:
        return None
    # Anything accepted is a valid genotype that round-trips.
    assert parse_genotype(str(genotype)) == genotype
    return genotype


FAST = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
GENOTYPE_ALPHABET = st.sampled_from(list("Genotype(normal_concat=[('sep_conv_3x3', 0)]){}\":,-1234567 \n\\x"))


@FAST
@given(st.text())
def test_random_text_never_raises_anything_else(text):
    _parses_or_genotype_error(text)


@FAST
@given(st.text(GENOTYPE_ALPHABET, max_size=120))
def test_random_genotype_like_text(text):
    _parses_or_genotype_error("Genotype(" + text)
    _parses_or_genotype_error("{" + text)


@st.composite
def mutated_text(draw):
    genotype = get_genotype(draw(st.sampled_from(ZOO)))
    text = draw(st.sampled_from([genotype.to_repr(), genotype.to_json()]))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 6)))
        insert = draw(st.text(GENOTYPE_ALPHABET, max_size=4) | st.sampled_from(
            ["", "9", "-1", "'none'", ", 2", "range(2, 7)", "__import__('os')", "None", "1e3"]))
        text = text[:i] + insert + text[j:]
    return text


@FAST
@given(mutated_text())
def test_mutated_valid_genotypes_parse_or_raise_genotype_error(text):
    _parses_or_genotype_error(text)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 9) | st.floats(allow_nan=False)
    | st.sampled_from(list(DARTS_OPS) + ["conv_9x9", ""]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["normal", "normal_concat", "reduce", "reduce_concat", "genotype", "name"]),
        children, max_size=5),
    max_leaves=15)


@FAST
@given(JSONISH)
def test_random_json_structures(data):
    _parses_or_genotype_error(json.dumps(data) if isinstance(data, dict) else json.dumps({"normal": data}))


@st.composite
def structurally_mutated(draw):
    data = get_genotype(draw(st.sampled_from(ZOO))).to_dict()
    kind = draw(st.sampled_from(["normal", "reduce"]))
    action = draw(st.sampled_from(["index", "op", "drop_edge", "concat", "swap"]))
    edges = data[kind]
    e = draw(st.integers(0, len(edges) - 1))
    if action == "index":
        edges[e][1] = draw(st.integers(-2, 8))
    elif action == "op":
        edges[e][0] = draw(st.sampled_from(list(KNOWN_OPS) + ["conv_9x9", "none"]))
    elif action == "drop_edge":
        del edges[e]
    elif action == "concat":
        data[kind + "_concat"] = draw(st.lists(st.integers(-1, 8), max_size=6))
    else:
        edges[e], edges[-1] = edges[-1], edges[e]
    return data


@FAST
@given(structurally_mutated())
def test_structural_mutations_are_valid_or_rejected_clearly(data):
    try:
        genotype = Genotype.from_dict(data)
    except GenotypeError as err:
        message = str(err)
        assert "cell" in message or "concat" in message, message
        return
    for kind in ("normal", "reduce"):
        for e, (_, idx) in enumerate(getattr(genotype, kind)):
            assert 0 <= idx < 2 + e // 2
