"""Training: the LightningModule (:mod:`.lit`), the CPU training path (:mod:`.cpu_training`),
progress lines (:mod:`.progress`) and the Markdown/PNG reports of a run (:mod:`.report`).

May import: ``probes`` (teachers for distillation), ``data``, ``models``, ``frontend`` and the
top-level utilities. Never ``deploy``, ``challenge``, ``benchmarks`` or ``commands``.
"""
