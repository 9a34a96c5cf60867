"""lorien's publisher: turns a models directory into a static repository, and serves one for demos/tests.

Modules: ``scan`` (models dir → validated families), ``publish`` (families → blobs, patches, manifests,
index, in crash-safe order), ``html`` (pages for people), ``serve`` (waitress + Bottle static server with the
Mallorn seed endpoints). Depends on ``repo`` only.
"""
