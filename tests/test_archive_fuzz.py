"""Fuzzing the loader with hypothesis: real archives (plain and entropy-coded) mutated at the byte level, and at
the level of their header, graph description, tensors and entropy blobs with the checksum recomputed (an
attacker's edit). Loading must give a slimgraph error or a working model; no code from the file may run, the
process must stay intact, and each load must finish within the deadline."""

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_archive_attacks import ARGS, KWARGS, Net, payload, process_snapshot, reseal

import slimgraph as sg
from slimgraph.archive.container import read_archive, write_archive
from slimgraph.errors import SlimgraphError

pytestmark = pytest.mark.filterwarnings("ignore:the archive's output type:UserWarning")
FUZZ = settings(max_examples=60, deadline=5000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Bytes of a plain and of an entropy-coded archive, a scratch path, and the canary payloads may write."""
    import slimgraph.archive.entropy  # noqa: F401 - loaded lazily by compressed archives: warm it up

    root = tmp_path_factory.mktemp("fuzz")
    gm = sg.capture(Net().eval(), ARGS, KWARGS)
    plain, packed = sg.save(gm, root / "plain.sg"), sg.save(gm, root / "packed.sg", compress=True)
    sg.load(packed)(*ARGS, **KWARGS)
    return {"plain": plain.read_bytes(), "packed": packed.read_bytes(), "scratch": root / "x.sg",
            "canary": root / "canary"}


def check_load(base) -> None:
    """The one property every fuzz case must have."""
    before = process_snapshot()
    try:
        model = sg.load(base["scratch"])
    except SlimgraphError:
        model = None
    if model is not None:
        try:  # a model that loads may still reject these inputs; it must not run anything else
            model(*ARGS, **KWARGS)
        except Exception:  # noqa: BLE001 - errors of the loaded graph's own torch ops are allowed here
            pass
    assert process_snapshot() == before, "loading changed the process"
    assert not base["canary"].exists(), "code from the archive ran"


def hostile_strings(canary):
    return st.sampled_from([
        "__class__", "__class__.__base__.__init__", "fc1.__dict__", "os.system", "builtins.eval", "sys::exit.default",
        "aten::from_file.default", "aten::__init__.default", "aten::relu.default", "operator.getitem", "math.sqrt",
        "torch.sym_max", "self", "forward", "training", "graph", "x\ny", "0", "", "*", "$node", "@graph",
        "@example/arg0", "fc1.weight", "fc1..weight", "defaultdict", "namedtuple", "model_output", "tuple", "dict",
        f"x={payload(canary)}", f'fc1.weight") or {payload(canary)} or ("', f"x, = 0\n    {payload(canary)}\n    x",
    ])


def json_values(canary):
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False,
                        allow_infinity=False), st.text(max_size=12), hostile_strings(canary))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), hostile_strings(canary)), inner,
                                                     max_size=3)), max_leaves=12)


def slots(tree, out=None):
    """Every (container, key) position of a JSON tree."""
    out = [] if out is None else out
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        out.append((tree, key))
        slots(value, out)
    return out


# ------------------------------------------------------------------------------------------------ bytes


@FUZZ
@given(kind=st.sampled_from(["plain", "packed"]), data=st.data())
def test_fuzz_random_bytes(base, kind, data):
    blob = bytearray(base[kind])
    action = data.draw(st.sampled_from(["flip", "overwrite", "truncate", "append"]))
    if action == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif action == "append":
        blob += data.draw(st.binary(min_size=1, max_size=64))
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = blob[i] ^ (1 << data.draw(st.integers(0, 7))) if action == "flip" else data.draw(
                st.integers(0, 255).filter(lambda b, old=blob[i]: b != old))
    base["scratch"].write_bytes(bytes(blob))
    with pytest.raises(SlimgraphError):  # nothing mutated at the byte level passes the checksum
        sg.load(base["scratch"])


# ------------------------------------------------------------------------------------------------ description


@FUZZ
@given(kind=st.sampled_from(["plain", "packed"]), data=st.data())
def test_fuzz_graph_description_fields(base, kind, data):
    """Replace, delete or duplicate any field of the graph description (names, targets, args, specs, shapes,
    dtypes, attribute table, examples, entropy metadata) and re-seal."""
    base["scratch"].write_bytes(base[kind])

    def edit(description, metadata, tensors):
        for _ in range(data.draw(st.integers(1, 3))):
            container, key = data.draw(st.sampled_from(slots(description)))
            action = data.draw(st.sampled_from(["replace", "replace", "delete", "duplicate"]))
            if action == "replace":
                container[key] = data.draw(json_values(base["canary"]))
            elif action == "delete":
                del container[key]
            elif isinstance(container, list):
                container.insert(key, json.loads(json.dumps(container[key])))
            else:
                container[data.draw(hostile_strings(base["canary"]))] = container[key]

    reseal(base["scratch"], edit)
    check_load(base)


@FUZZ
@given(data=st.data())
def test_fuzz_node_names_targets_and_specs(base, data):
    """Targeted: hostile strings where fx would paste them into source or getattr chains."""
    base["scratch"].write_bytes(base["plain"])
    hostile = hostile_strings(base["canary"])

    def edit(d, metadata, tensors):
        node = data.draw(st.sampled_from(d["nodes"]))
        field = data.draw(st.sampled_from(["name", "target", "kwarg", "input name", "output spec", "input spec"]))
        value = data.draw(hostile)
        if field == "name":
            node[0] = value
        elif field == "target":
            node[2] = value
        elif field == "kwarg" and len(node) > 3:
            node[4:] = [{value: None}]
        elif field == "input name":
            d["inputs"]["names"][0] = value
        elif field == "output spec":
            d["output"] = data.draw(st.sampled_from([[value, ["*"]], ["model_output", value, ["a"], ["*"]],
                                                     ["namedtuple", value, [value], ["*"]], ["dict", [value], ["*"]]]))
        else:
            d["inputs"]["spec"][1][1][1] = [value]

    reseal(base["scratch"], edit)
    check_load(base)


# ------------------------------------------------------------------------------------------------ header, tensors


@FUZZ
@given(kind=st.sampled_from(["plain", "packed"]), data=st.data())
def test_fuzz_header_metadata_and_tensors(base, kind, data):
    """Header metadata entries, tensor dtypes and shapes, missing and extra tensors, entropy blobs."""
    base["scratch"].write_bytes(base[kind])
    metadata, tensors = read_archive(base["scratch"])
    metadata.pop("sha256")
    key = data.draw(st.sampled_from(sorted(tensors)))
    action = data.draw(st.sampled_from(["metadata", "dtype", "shape", "drop", "extra", "blob"]))
    if action == "metadata":
        metadata[data.draw(st.sampled_from(["format", "format_version", "graph_encoding", "graph", "x"]))] = \
            data.draw(st.one_of(st.text(max_size=10), st.sampled_from(["1", "2", "3", "zlib", "slimgraph", "{}"])))
    elif action == "dtype":
        t = tensors[key].contiguous().view(-1).view(torch.uint8)
        dtype = data.draw(st.sampled_from([torch.uint8, torch.int8, torch.bool, torch.float16, torch.int64]))
        tensors[key] = t[: t.numel() // dtype.itemsize * dtype.itemsize].view(dtype)
    elif action == "shape":
        tensors[key] = tensors[key].reshape(-1)[: data.draw(st.integers(0, max(tensors[key].numel() - 1, 0)))]
    elif action == "drop":
        del tensors[key]
    elif action == "extra":
        tensors[data.draw(st.sampled_from(["extra", "fc1.bias2", "@example/arg9"]))] = torch.zeros(3)
    else:
        blob = bytearray(tensors[key].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        for _ in range(data.draw(st.integers(1, 4))):
            if blob:
                blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
        tensors[key] = torch.frombuffer(blob, dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
    write_archive(base["scratch"], tensors, metadata)
    check_load(base)
