"""Similar-nodule search: an index of nodule embeddings (faiss) and its queries.

See :mod:`activecad.retrieval.index`.
"""

from activecad.retrieval.index import INDEX_FORMAT, METADATA_COLUMNS, Neighbour, NoduleIndex

__all__ = ["INDEX_FORMAT", "METADATA_COLUMNS", "Neighbour", "NoduleIndex"]
