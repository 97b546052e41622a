"""The annotation service: the active-learning queue in a reader's browser.

A FastAPI app (:func:`activecad.service.app.create_app`, run by ``activecad serve``) on the
same store as the loop: token auth with roles (annotator < reviewer < admin), a leased work
queue over the current query, scan volumes and slices from the data folder, findings with
an append-only audit trail, review, and LUNA16 / per-reader exports. The HTTP contract is
in the README ("Annotation service").
"""
