"""Front end: audio in, log-mels out.

:mod:`.audio` reads, mixes down, resamples and pads/crops clips; :mod:`.features` holds the
log-mel front ends as frozen, hashable configs (``PRESETS``) and the torch ``LogMel``.
:mod:`.efficientat_mel` is EfficientAT's own log-mel (the ``efficientat32k`` preset's style).

May import: the top-level utilities (``errors``, ``log``, ``fileio``, ...). Nothing else.
"""
