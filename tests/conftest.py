import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one intra-op thread per xdist worker: no oversubscription on 2 cores


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A private cache so tests never depend on (or pollute) the user's ~/.cache/slimgraph."""
    path = tmp_path_factory.mktemp("slimgraph-cache")
    old = os.environ.get("SLIMGRAPH_CACHE")
    os.environ["SLIMGRAPH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SLIMGRAPH_CACHE", None)
    else:
        os.environ["SLIMGRAPH_CACHE"] = old
