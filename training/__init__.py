"""statestream's training side: one package per task, the shared loop, recipes and ONNX export.

Everything here is PyTorch (reading a recipe excepted) and runs offline. It takes from the server
only ``service.contract`` (the manifest schema and its graph checks, so a model that leaves
``training/onnx_export.py`` is checked against exactly the rules the server applies at load),
the numpy data sets of ``service.datasets`` and the command-line helpers of ``service.command``.
docs/training.md says where each part lives.
"""
