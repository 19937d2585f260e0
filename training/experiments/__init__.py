"""The measurements behind the docs: each module runs as ``python -m training.experiments.<name>``
and prints (or plots) what a docs page quotes; none of them is needed to train or serve a model."""
