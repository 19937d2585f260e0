"""Task drivers: the only model-aware code on the serving side.

They turn a request into the tensors of a step (and outputs back into an answer) and decide
what to feed next (generation). Every step they run goes through the model's scheduler, so many
concurrent sessions and generations batch together.
"""
