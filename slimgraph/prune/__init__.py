"""Structured pruning on the captured graph: channels, FFN neurons and attention heads, physically removed.

    import slimgraph as sg
    small = sg.prune(model, example_inputs, ratio=0.5, importance="l2", scope="local", round_to=8)
    print(sg.prune_report(small).table())

or as the pass ``prune{ratio=0.5,importance=l2,scope=local,round_to=8}`` in any pipeline. Laid out like
``slimgraph.quant``: ``api.py`` (the function), ``prune_pass.py`` (the pass), ``report.py`` (the report);
``analysis/`` finds the coupled units, ``importance.py`` scores them, ``plan.py`` chooses ratios and rounding,
``rewrite.py`` does the graph surgery and ``reconstruct.py`` the least-squares refit.
"""

from .api import prune
from .prune_pass import Prune
from .report import GroupReport, PruneReport, prune_report

__all__ = ["Prune", "PruneReport", "GroupReport", "prune", "prune_report"]
