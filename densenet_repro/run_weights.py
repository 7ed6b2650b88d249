"""Loading what a training run left behind: a run folder's weights into a bare model.

Kept apart from the engine (train.py), which writes these files (runstore.py names them): the
analyses that read trained networks (feature reuse, deep supervision) need only this.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from densenet_repro.errors import CheckpointError
from densenet_repro.runstore import CHECKPOINT, WEIGHTS, bare_state_dict, read_summary


def load_run_weights(run_dir, model: nn.Module, how_to_train: str = "train that run first"
                     ) -> tuple[nn.Module, int, bool]:
    """Load into `model` whatever weights a run folder holds: weights.pt once finished, else the checkpoint's.

    Returns (model in eval mode, epochs trained, finished). The engine saves the state of the model it
    trained, which DDP prefixes with `module.` and torch.compile with `_orig_mod.`; both are removed, so
    a run trained on a GPU loads into a bare model.
    """
    run_dir = Path(run_dir)
    if (run_dir / WEIGHTS).is_file():
        state = torch.load(run_dir / WEIGHTS, map_location="cpu", weights_only=True)
        epochs, finished = int(read_summary(run_dir)["epochs"]), True
    elif (run_dir / CHECKPOINT).is_file():
        ckpt = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
        state, epochs, finished = ckpt["model"], int(ckpt["epoch"]), False
    else:
        raise CheckpointError(f"{run_dir} has neither {WEIGHTS} nor {CHECKPOINT}: {how_to_train}")
    model.load_state_dict(bare_state_dict(state))
    return model.eval(), epochs, finished
