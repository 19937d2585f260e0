"""The captioner: Show, Attend and Tell on scenes of handwritten digits, served as init + step graphs.

``train.py`` trains ``net.Captioner`` with teacher forcing on seeded scenes and keeps the weights
with the best validation exact match; ``export.py`` writes the init graph (image -> h0, c0,
annotations, mask) and the step graph (word, h, c, annotations, mask -> logits, attention, h',
c'), checked against PyTorch (``training.decoder_export``); ``evaluate.py`` scores the installed
graphs on the test and composition splits. docs/attention.md has the model and its numbers.
"""
