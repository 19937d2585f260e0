"""Sequence classifiers: speaker identification on Japanese Vowels, streamed or whole-sequence.

Two nets, one task, picked by the recipe's ``net``: ``stream_gru``, a unidirectional GRU with a
linear readout exported as a one-step graph (one frame in, the class logits after that frame out;
trained on the cross-entropy of every frame, so its running answer is meant to be right before
the utterance ends), and ``bidirectional_gru`` (``whole_sequence.py``), one padded utterance per
call. There is no validation split in the UEA/UCR release and none is carved out: the recipes
train for a fixed number of epochs, chosen once, and the test set is scored once, at export.
"""
