"""``statestream import``: a stateful ONNX graph from elsewhere becomes a model folder the server loads.

A TOML spec says which graph inputs hold state (and where their batch axis is), which are
constants, and which per-step input carries its tail into the next step. The importer wraps the
graph into the step contract with the ``onnx`` package's helpers, records the golden trace by
running the original graph as it is, proves batch invariance, and only then writes the folder
(docs/your-model.md). It uses only ``service.contract``, ``onnx`` and ``onnxruntime``: no server
code, so ``training/`` may call it too. Use :func:`service.importer.folder.import_onnx`.
"""
