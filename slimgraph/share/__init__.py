"""Weight sharing (Deep Compression's second stage): a k-means codebook per layer, integer codes in the graph.

    import slimgraph as sg
    sp = sg.sparsify(model, (x,), sparsity=0.9, lower="off")
    sh = sg.share_weights(sp, bits=5, data=batches)       # codebooks fine-tuned by distillation
    print(sg.share.last_report(sh))

Importing this package registers the ``share-weights`` pass.
"""

from .api import share_weights
from .kmeans import KMeansResult, kmeans_1d
from .report import LayerShare, ShareReport, last_report
from .share_pass import ShareWeights, code_dtype

__all__ = ["KMeansResult", "LayerShare", "ShareReport", "ShareWeights", "code_dtype", "kmeans_1d", "last_report",
           "share_weights"]
