"""Property: a pipeline printed as a string parses back to the same passes, ``parse(format(p)) == p``, for every
registered pass with random option values and for random lists of passes.

Strings are drawn from names' characters (letters, digits, ``_-./``): the pipeline syntax has no quoting, so a
string option holding ``,`` ``=`` ``:`` ``{`` ``[`` or spaces cannot round-trip (see the last test)."""

import dataclasses
import string
import typing

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import slimgraph  # noqa: F401 - registers the built-in passes
from slimgraph.errors import PipelineError
from slimgraph.passes import parse_pipeline, registered_passes

NAME_CHARS = string.ascii_letters + string.digits + "_-./"
PASSES = registered_passes()


def _strategy(hint) -> st.SearchStrategy:
    """Values of an option's type that the pipeline syntax can spell."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return st.one_of([st.none() if a is type(None) else _strategy(a) for a in args])
    if origin in (tuple, list):
        return st.lists(st.text(NAME_CHARS, min_size=1, max_size=8), max_size=4).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(NAME_CHARS, min_size=1, max_size=8), _strategy(args[1]), max_size=4)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(-10**9, 10**9)
    if hint is float:  # ratios and fractions are what passes accept most; nan != nan has no value to compare
        return st.one_of(st.floats(0, 1), st.floats(allow_nan=False))
    if hint is str:
        return st.text(NAME_CHARS, max_size=12)
    raise AssertionError(f"no strategy for option type {hint!r}: add one so the round trip covers it")


def _options(cls) -> dict[str, st.SearchStrategy]:
    """Per option: its type's values, or its default for a string (passes accept few words: a scheme, a scope;
    random text alone would mostly be refused and leave the other options untested)."""
    hints = typing.get_type_hints(cls)
    return {f.name: st.one_of(st.just(f.default), _strategy(hints[f.name])) if hints[f.name] is str
            else _strategy(hints[f.name]) for f in dataclasses.fields(cls) if f.init}


@st.composite
def _passes(draw, names=tuple(PASSES)):
    cls = PASSES[draw(st.sampled_from(names))]
    options = draw(st.fixed_dictionaries({}, optional=_options(cls)))
    try:
        return cls(**options)
    except (TypeError, ValueError):  # the pass's own validation refuses the value: not a spelling question
        assume(False)


@pytest.mark.parametrize("name", list(PASSES))
def test_every_pass_option_round_trips(name):
    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
    @given(_passes(names=(name,)))
    def round_trip(p):
        assert parse_pipeline(str(p)) == [p], str(p)

    round_trip()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(_passes(), max_size=6))
def test_pipeline_lists_round_trip(passes):
    spec = ",".join(str(p) for p in passes)
    assert parse_pipeline(spec) == passes, spec
    assert parse_pipeline(passes) == passes  # Pass objects are taken as they are


@settings(max_examples=20, deadline=None)
@given(st.lists(_passes(), min_size=1, max_size=4), st.sampled_from([" ", "\n", "  "]))
def test_whitespace_around_items_is_ignored(passes, space):
    spec = ("," + space).join(space + str(p) + space for p in passes)
    assert parse_pipeline(spec) == passes, spec


def test_options_the_syntax_cannot_spell_are_known():
    """The documented limit of the property above: a separator inside a string option changes its meaning."""
    prune = PASSES["prune"](ignore=("a,b",))
    with pytest.raises(AssertionError):
        assert parse_pipeline(str(prune)) == [prune]
    with pytest.raises(PipelineError):
        parse_pipeline("prune{ignore=[a}")
