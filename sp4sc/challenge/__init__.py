"""The DCASE challenge side: submission packages (:mod:`.submission`) and the rules that
validate them (:mod:`.validate`).

May import: ``deploy``, ``training``, ``probes``, ``data``, ``models``, ``frontend`` and the
top-level utilities. Never ``benchmarks`` or ``commands``.
"""
