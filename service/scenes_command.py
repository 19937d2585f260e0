"""``statestream scenes``: write sample scenes of the captioner's data set as PNGs, images to caption.

The scenes are generated from the bundled digits (``service/datasets/scenes.py``, numpy and
Pillow), so the command runs on the serving install, beside ``client caption``.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.command import Parser, check_folder_to_write, int_in, nonempty_path, seed
from service.datasets.scenes import write_scenes

#: The most scenes one command writes: samples to look at, not a data set.
MAX_SCENES = 10_000
SPLITS = ("train", "validation", "test", "composition")


def main(argv: Sequence[str]) -> int:
    """``scenes --out DIR --count N``: the PNGs, with scenes.json holding each one's caption and digit boxes."""
    parser = Parser(
        prog="statestream scenes",
        description="Write sample scenes of the captioner's data set (service/datasets/scenes.py) as greyscale\n"
        "PNGs, with scenes.json holding each file's caption and digit boxes: images to caption.",
    )
    parser.add_argument("--out", type=nonempty_path, required=True, help="folder to write (created if missing)")
    parser.add_argument("--count", type=int_in(1, MAX_SCENES), default=8, help="how many scenes")
    parser.add_argument("--split", default="test", choices=SPLITS, help="which split")
    parser.add_argument("--seed", type=seed, default=0, help="the same seed writes the same scenes")
    args = parser.parse_args(list(argv))
    check_folder_to_write(args.out)
    for line in write_scenes(args.out, args.split, args.count, args.seed):
        print(line)
    return 0
