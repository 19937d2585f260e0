"""Forecasters: echo state networks (fixed or adapting online) and gated RNNs on Mackey-Glass and the laser.

``train.py`` fits a reservoir's readout by ridge regression (seconds) or trains a GRU or LSTM on
free runs (``free_run_training.py``: minutes); ``export.py`` writes the one-step graph after
teacher-forced and free-run parity; ``evaluate.py`` recomputes the series' scores from the graph
(``series.py``: NRMSE84 on Mackey-Glass, one-step and 20-step free-run NRMSE on the laser,
recovery after a change of τ for the drifting series). The nets are ``esn.py`` and ``gated_net.py``.
"""
