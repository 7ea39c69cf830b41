"""Training: the LightningModule (:mod:`.lit`), knowledge distillation behind one object it calls
(:mod:`.distill`), precise BatchNorm (:mod:`.precise_bn`), repeatable seeding (:mod:`.seeding`),
the CPU training path (:mod:`.cpu_training`),
progress lines (:mod:`.progress`), the Markdown/PNG reports of a run (:mod:`.report`) and the
callback that starts a fit from trained weights (:mod:`.init_weights`, device fine-tuning) and
quantisation-aware training (:mod:`.qat`).

May import: ``probes`` (teachers for distillation), ``data``, ``models``, ``frontend`` and the
top-level utilities. Never ``deploy``, ``challenge``, ``benchmarks`` or ``commands``.
"""
