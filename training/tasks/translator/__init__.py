"""The date translator: a character encoder-decoder with attention, "Nov 27, 2026" -> "2026-11-27".

``statestream train dates`` trains it on generated surface forms (``train.py``); ``statestream
export`` writes the init graph (the encoder) and the step graph (one decoder step), checked
against PyTorch (``export.py``); ``statestream eval`` decodes the held-out templates greedily with
ONNX Runtime (``evaluate.py``).
"""
