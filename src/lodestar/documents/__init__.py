"""Documents: the one pipeline that turns an uploaded file into stored chunks.

``formats`` reads bytes into text, ``model`` says what a stored chunk carries,
``store`` reads and writes a collection's chunks over the vector service's
messages, and ``pipeline`` puts a document (chunk, embed, upsert, commit,
prune). The gateway's documents API and the ``lodestar ingest`` command both
run ``pipeline.put_document``.
"""
