"""statestream's training side: networks, data sets, loops, recipes and ONNX export.

Everything here is PyTorch and runs offline. The only thing it shares with the server is
``service.contract`` (the manifest schema and its graph checks), so a model that leaves
``training/onnx_export.py`` is checked against exactly the rules the server applies at load.
"""
