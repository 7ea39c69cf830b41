"""sp4sc: low-complexity acoustic scene classification for DCASE Task 1.

The package is cut into layers; a module imports only from its own layer or
from layers below it (``tests/test_layers_imports.py`` fails on an upward
import or an import circle):

====  =====================  ==================================================
rank  package                holds
====  =====================  ==================================================
8     ``cli``, ``__main__``  the ``sp4sc`` command's entry point
7     ``commands/``          one module per sub-command (argument parsing, output)
6     ``challenge/``         DCASE submission packages and their validation rules
6     ``benchmarks/``        ``sp4sc bench``: speed of features, training, inference
5     ``training/``          the LightningModule, CPU training path, progress, reports
5     ``deploy/``            complexity, ONNX graph/export/parity, inference, SP4ASC import
4     ``probes/``            frozen encoders, δt windows, linear probes, teachers
3     ``data/``              dataset indexes, feature cache, data module, augmentation
2     ``models/``            model families, registry, BatchNorm folding, checkpoints
1     ``frontend/``          audio reading and the log-mel front ends
0     top-level modules      ``errors``, ``log``, ``constants``, ``fileio``, ``cpu``,
                             ``machine``, ``metrics``: small utilities used everywhere;
                             ``cvfolder``: the layout of an ``sp4sc cv --out`` folder
====  =====================  ==================================================
"""

__version__ = "0.1.0"
