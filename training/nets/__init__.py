"""Networks shared by several tasks, written to the step contract: ``forward(x, *state) -> (y, *new_state)``.

Every net that statestream serves is a step function with state (see DESIGN.md, "The one
contract"). :class:`StepNet` is the small base class the training loop and the exporter rely
on; ``cells`` holds the zoo's cells and layers, ``cell_step`` a stack of them with a readout,
``attention`` the additive attention both decoders use. A net only one task uses lives in
that task's package (``training/tasks/<task>/``).
"""

from training.nets.step import StepNet

__all__ = ["StepNet"]
