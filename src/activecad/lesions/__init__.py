"""Universal lesion detection from partially labelled data: MELD's pure parts.

Score fusion of the classification heads by the organ gates (Eq. 1), missing-annotation
matching (MAM) and negative-region mining (NRM) of Yan et al., "Universal Lesion Detection
by Learning from Multiple Heterogeneously Labeled Datasets" (2020). Arrays and tables in,
arrays and tables out; no model, no file format.
"""

from activecad.lesions.fusion import fuse_head_scores, head_weights
from activecad.lesions.mining import ignore_boxes_by_image, mine_missing, suspicious_regions

__all__ = [
    "fuse_head_scores",
    "head_weights",
    "ignore_boxes_by_image",
    "mine_missing",
    "suspicious_regions",
]
