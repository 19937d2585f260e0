"""``statestream client models``: the models a server holds, with their version, task and state size."""

from __future__ import annotations

import argparse
import json

from service.client.registry import command
from service.client.sdk import Client

DESCRIPTION = "list the models being served, with their version, task and state size"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own: the connection options are all it takes."""


@command("models", DESCRIPTION, add_arguments)
def models(client: Client, args: argparse.Namespace) -> int:
    listed = client.list_models()
    rows = [
        {
            "name": m.name,
            "version": m.version,
            "task": m.task,
            "state_bytes": m.state_bytes,
            "scores": dict(m.scores),
            "active_sessions": m.active_sessions,
        }
        for m in listed
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    # Columns as wide as their longest entry, so a long model or task name keeps the table aligned.
    name_width = max((len(m.name) for m in listed), default=0)
    task_width = max((len(m.task) for m in listed), default=0)
    for row in rows:
        print(
            f"{row['name']:<{name_width}} v{row['version']:<4} {row['task']:<{task_width}} "
            f"{row['state_bytes']:>8} state bytes"
        )
    return 0
