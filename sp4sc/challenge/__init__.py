"""The DCASE challenge side: DCASE 2021 Task 1A submission packages (:mod:`.submission`) and
the rules that validate them (:mod:`.validate`); DCASE 2024/2025 Task 1 packages, their
validation and device-aware inference (:mod:`.editions`).

May import: ``deploy``, ``training``, ``probes``, ``data``, ``models``, ``frontend`` and the
top-level utilities. Never ``benchmarks`` or ``commands``.
"""
