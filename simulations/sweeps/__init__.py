"""Privacy/utility sweeps: spec → points → execution → results, tuning cost and report; see docs/sweeps.md.

``spec`` (the sweep file and its points), ``runner`` (plan, run, finish), ``execution`` (running points
locally or on Ray), ``store`` (the sweep directory's own files), ``results`` (rows and the selected point),
``accounting`` (the tuning epsilon, via ``dpfl.privacy.tuning``), ``groups``, ``plots`` and ``report``.
"""
