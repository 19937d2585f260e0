"""Voice activity: Silero VAD, an imported task (its models come from ``statestream import``, not a recipe).

Nothing is trained here, so there is no recipe, train or export: ``evaluate.py`` recomputes an
imported folder's scores from its step graph (``statestream eval``), on synthetic speech with
exact labels. ``eval_set.py`` made the shipped clean utterances (``eval_speech.npz``, provenance
in ``eval_speech.md``); ``calls.py`` builds the test calls from them (pauses, seeded noise at each
SNR) and their frame labels. docs/vad.md has the scores.
"""

#: An imported task: the training side only scores its models (``training.tasks.trained_tasks``).
IMPORTED = True
