"""Networks shared by several kinds, written to the step contract: ``forward(x, *state) -> (y, *new_state)``.

Every net that statestream serves is a step function with state (see DESIGN.md, "The one
contract"). :class:`StepNet` is the small base class the training loop and the exporter rely
on; ``cells`` holds the zoo's cells and layers, ``cell_step`` a stack of them with a readout,
``attention`` the additive attention both decoders use. A net only one kind uses lives in
that kind's package (``training/kinds/<kind>/``).
"""

from training.nets.step import StepNet

__all__ = ["StepNet"]
