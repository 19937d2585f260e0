"""Associative memories: a classical Hopfield net, a dense Hopfield memory, an RBM; served as sweep graphs.

``train.py`` computes the memory (Hebbian or Storkey weights, the dense memory's patterns) or
trains it (the RBM: ``rbm_training.py``); ``export.py`` writes the sweep graph after its parity
checks; ``evaluate.py`` scores the installed graph. The nets are ``hopfield.py``,
``dense_hopfield.py`` and ``boltzmann.py``, on the shared ``sweep.SweepNet``. docs/memory.md
has the measurements.
"""
