"""Load generators, the echo ceiling and ``statestream bench``: the side-by-side serving benchmark."""
