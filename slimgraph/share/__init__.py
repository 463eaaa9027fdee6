"""Weight sharing (Deep Compression's second stage): a k-means codebook per layer, integer codes in the graph.

    import slimgraph as sg
    sp = sg.sparsify(model, (x,), sparsity=0.9, lower="off")
    sh = sg.share_weights(sp, bits=5, data=batches)       # codebooks fine-tuned by distillation
    print(sg.share.last_report(sh))

Importing this package registers the ``share-weights`` pass.
"""

from .allocate import BitAllocation, allocate_bits
from .api import share_weights
from .kmeans import KMeansResult, code_entropy, kmeans_1d, step_for_entropy, uniform_1d
from .report import LayerShare, ShareReport, last_report
from .share_pass import ShareWeights, code_dtype

__all__ = ["BitAllocation", "KMeansResult", "LayerShare", "ShareReport", "ShareWeights", "allocate_bits",
           "code_dtype", "code_entropy", "kmeans_1d", "last_report", "share_weights", "step_for_entropy",
           "uniform_1d"]
