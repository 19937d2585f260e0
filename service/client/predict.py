"""``statestream client predict``: stream a text one character per message, print the likeliest next ones.

A character the model does not know is refused on its own (one line naming its position in
the whole ``--text``) and the rest of the text still streams; the command then exits 3. A
refusal that is not about one character (it would repeat for every other) ends the command.
"""

from __future__ import annotations

import argparse
import json
import sys

from service.client.positions import within_text
from service.client.registry import command, served_model
from service.client.sdk import Client, StepFailed
from service.command import EXIT_REFUSED, EXIT_USAGE, UINT32_MAX, CommandError, error_line, int_in

DESCRIPTION = "stream a text one character per message over one session; print the top next characters after each"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, as 'statestream client models' lists it")
    parser.add_argument("--text", required=True, help="the text to stream (at least one character)")
    parser.add_argument(
        "--top-k", type=int_in(1, UINT32_MAX), default=5, help="how many likeliest next characters to print"
    )


@command("predict", DESCRIPTION, add_arguments, tasks=("language_model",))
def predict(client: Client, args: argparse.Namespace) -> int:
    if not args.text:
        raise CommandError("--text is empty: give at least one character to stream", EXIT_USAGE)
    served_model(client, args)
    session = client.open(args.model, top_k=args.top_k)
    refused = 0
    try:
        for position, char in enumerate(args.text):
            try:
                result = session.step(text=char)
            except StepFailed as exc:
                if "at position" not in exc.error.message:
                    raise  # not this character's fault: every other one would be refused the same way
                refused += 1
                _report_refused(args, exc, position, char)
                continue
            out = result.outputs[0]
            top = [[t.token, round(t.prob, 4)] for t in out.top]
            if args.json:
                print(json.dumps({"seq": result.seq, "input": out.input, "top": top}), flush=True)
            else:
                shown = "  ".join(f"{t!r}:{p:.2f}" for t, p in top)
                print(f"{result.seq:>4} {out.input!r:>6} -> {shown}", flush=True)
    finally:
        session.close()
    return EXIT_REFUSED if refused else 0  # each refused character has had its own line


def _report_refused(args: argparse.Namespace, exc: StepFailed, position: int, char: str) -> None:
    """One line for one refused character: a JSON row on stdout, or the error line on stderr."""
    message = within_text(exc.error.message, position, "--text")
    if args.json:
        row = {"error": exc.error.code_name, "message": message, "position": position, "input": char}
        print(json.dumps(row), flush=True)
    else:
        print(error_line(message, code=exc.error.code_name), file=sys.stderr, flush=True)
