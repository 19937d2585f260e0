"""Data sets that ship with the repository (never downloaded at run time)."""

from service.datasets.shakespeare import CharCorpus, Vocabulary, load_shakespeare
from service.datasets.streams import EVAL_CHUNK, EVAL_STREAMS, as_streams

__all__ = ["EVAL_CHUNK", "EVAL_STREAMS", "CharCorpus", "Vocabulary", "as_streams", "load_shakespeare"]
