"""Frozen pre-trained embeddings (PaSST, BEATs) probed at varying temporal support δt.

The method of Quelennec, Olvera, Peeters and Essid, "On the choice of the
optimal temporal support for audio classification with pre-trained
embeddings" (ICASSP 2024), inside sp4sc:

audio -> windows of δt (:mod:`~sp4sc.probes.windows`) -> frozen encoder
(:mod:`~sp4sc.probes.encoders`) -> embedding cache (:mod:`~sp4sc.probes.cache`,
:mod:`~sp4sc.probes.extract`) -> linear probe and aggregation over windows
(:mod:`~sp4sc.probes.probe`) -> δt table, plot and cost (:mod:`~sp4sc.probes.sweep`).

Submodules are imported on use: ``import sp4sc.probes`` stays light.
"""
