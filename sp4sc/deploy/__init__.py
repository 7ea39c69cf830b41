"""Deployment: from a trained model to what runs on a device.

Complexity counting and budgets (:mod:`.complexity`), the ONNX graph (:mod:`.onnx_graph`),
export (:mod:`.onnx_export`) and its parity checks (:mod:`.onnx_parity`), static int8
quantisation (:mod:`.quantize`), inference on audio files with a checkpoint (:mod:`.infer`) or an
exported ONNX model (:mod:`.onnx_infer`), and the import of the official SP4ASC checkpoints
(:mod:`.sp4asc_import`). BatchNorm folding itself is a model operation (:mod:`sp4sc.models.fold`).

May import: ``probes``, ``data``, ``models``, ``frontend`` and the top-level utilities.
Never ``training``, ``challenge``, ``benchmarks`` or ``commands``.
"""
