"""Benchmarks behind ``sp4sc bench``; each prints its figures and the machine (:mod:`sp4sc.machine`).

May import: ``deploy``, ``training``, ``probes``, ``data``, ``models``, ``frontend`` and the
top-level utilities. Never ``commands`` or ``challenge``.
"""
