"""Dependency analysis for structured pruning, on the canonical ATen graph.

Walks the graph once in topological order and gives every tensor value a :class:`Labels` array: which
pruning *element* each index of its channel-carrying dims holds. Layers that produce channels (conv
output channels, linear output features, embedding dims) create fresh elements; every other op maps
labels from inputs to outputs with an exact rule and *unions* elements that must go together:

* element-wise ops and residual adds couple operands position by position (broadcast dims excepted);
* conv/linear/embedding weights, biases and norm parameters become *members*: parameter slices that
  follow their elements when they are removed;
* views, flatten, permute/transpose, unsqueeze, expand, concat, split and slice move labels with the data,
  so channel -> h*w features, channel shuffles and q/k/v splits are tracked exactly;
* depthwise convs pass labels through; group convs and GroupNorm tie the same local index of every
  group together so group structure survives;
* attention (sdpa, or matmul/softmax/matmul) unions everything inside one head of q, k and v, so heads
  are removed whole; GQA's expand/reshape of k/v makes each kv head carry its q heads along;
* an op without a rule, a graph output, or a non-prunable tensor meeting a prunable one *blocks* the
  elements involved (never guessed), with the reason kept for the report.

The union-find classes are the units that pruning removes; classes created by the same set of layers
form a :class:`Group`.
"""

from __future__ import annotations

from ..labels import Labels

# rule modules register themselves in RULES on import, in this order (experts wraps attention's matmul rule)
from . import attention, elementwise, experts, layers, recurrent, reductions, shapes  # noqa: F401
from .driver import analyze
from .elementwise import couple_elementwise
from .layers import CONV_TRANSPOSES, CONVS
from .model import RULES, Analysis, Group, Member, Source, SplitConstraint, rule
from .shapes import _split_sizes, reshape_labels

__all__ = ["CONVS", "CONV_TRANSPOSES", "RULES", "Analysis", "Group", "Labels", "Member", "Source", "SplitConstraint",
           "analyze", "couple_elementwise", "reshape_labels", "rule", "_split_sizes"]
