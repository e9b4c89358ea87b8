"""``detector demo``: the embedded broker, the bundled model, ``serve``, a replay and the alerts, end to end.

:mod:`detector.demo.run` orchestrates, :mod:`detector.demo.serve_process` runs ``serve`` as a child process,
:mod:`detector.demo.model` holds the bundled model and its recipe, :mod:`detector.demo.summary` turns the
daemon's metrics into the closing figures.
"""
