"""Labelling in the browser (``loracle al serve``) and the hand-off to Label Studio and Argilla.

A room of its own above :mod:`loracle.active`, which it uses only through what that package exports (the run's
state, label parsing, the run lock and ``resume``); nothing in ``active/`` imports it. The web framework
(Starlette, served by uvicorn; the ``serve`` extra) is imported only by :func:`create_app`, so importing this
package, or building the command line, stays light.

- ``session.py``: what the page shows and does over a run's state (queries, answers, undo, progress), no web.
- ``predictions.py``: the model's prediction for each query, computed lazily once per round, in the background.
- ``jobs.py``: the next round in a background thread, with a status to poll.
- ``security.py``: loopback by default, a token otherwise, same-origin JSON writes, security headers.
- ``app.py``: the Starlette app, with ``templates/`` and ``static/``.
- ``handoff.py``: an annotation tool's answers back into the run (the one validation path of every import).
- ``label_studio.py``: pending queries to Label Studio tasks and a Label Studio export back to labels.
- ``argilla.py``: pending queries to Argilla records and exported records back to labels.
- ``cli.py``: ``loracle al serve`` and the Label Studio and Argilla flags of ``loracle al label``.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from loracle.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'loracle.serve' has no attribute {name!r}")
