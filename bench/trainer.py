"""train.py for the benchmarks that time its pieces (train_speed.py, chat_packing.py): loaded from its file.

    from trainer import load_trainer      # in a bench/ script, run as python bench/NAME.py
    train = load_trainer()
    run, state = train.build_run(...)

train.py is the program at the checkout's root, not an installed module (pip install -e . installs the
smallgpt package and model.py), so a benchmark in bench/ loads it by path.
"""

import importlib.util
import sys
from pathlib import Path


def load_trainer():
    """The train module, from the checkout's train.py."""
    spec = importlib.util.spec_from_file_location("train", Path(__file__).resolve().parents[1] / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module  # (its dataclasses look their module up by name)
    spec.loader.exec_module(module)
    return module
