"""Data: dataset indexes (:mod:`.index`), the toy dataset (:mod:`.toy`), the log-mel feature cache
(:mod:`.cache`), the Lightning data module (:mod:`.datamodule`) and augmentations (:mod:`.augment`).

Submodules are imported on use, so that ``import sp4sc.data.index`` does not pull in Lightning.

May import: ``models``, ``frontend`` and the top-level utilities.
"""
