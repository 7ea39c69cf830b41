"""Frozen pre-trained embeddings (PaSST, BEATs, EfficientAT) probed at varying temporal support δt.

The method of Quelennec, Olvera, Peeters and Essid, "On the choice of the
optimal temporal support for audio classification with pre-trained
embeddings" (ICASSP 2024), inside sp4sc:

audio -> windows of δt (:mod:`~sp4sc.probes.windows`) -> frozen encoder
(:mod:`~sp4sc.probes.encoders`) -> embedding cache (:mod:`~sp4sc.probes.cache`,
:mod:`~sp4sc.probes.extract`) -> linear probe and aggregation over windows
(:mod:`~sp4sc.probes.probe`) -> δt table, plot and cost (:mod:`~sp4sc.probes.sweep`).

Submodules are imported on use: ``import sp4sc.probes`` stays light.

May import: ``data``, ``models``, ``frontend`` and the top-level utilities.
"""

# EfficientAT width names (fschmid56/EfficientAT helpers/utils.py NAME_TO_WIDTH); the encoder
# registry (sp4sc.probes.encoders.ENCODERS) is built from them. Kept here, free of torch, so
# that `sp4sc probe --help` stays fast.
EFFICIENTAT_VARIANTS = ("mn01", "mn02", "mn04", "mn05", "mn06", "mn08", "mn10", "mn12", "mn14", "mn16", "mn20", "mn30", "mn40")
BUILTIN_ENCODERS = ("passt", "beats", *(f"efficientat_{v}" for v in EFFICIENTAT_VARIANTS))
