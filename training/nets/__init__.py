"""Networks written to the step contract: ``forward(x, *state) -> (y, *new_state)``.

Every net that statestream serves is a step function with state (see DESIGN.md, "The one
contract"). :class:`StepNet` is the small base class the training loop and the exporter rely
on: a forward pass over a chunk of time steps that takes and returns the state explicitly
(batch-leading), and ``initial_state`` for the state a fresh stream starts from.
"""

from training.nets.char_lstm import CharLSTM
from training.nets.step import StepNet

__all__ = ["CharLSTM", "StepNet"]
