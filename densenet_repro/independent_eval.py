"""The test error of published weights, computed without the training engine.

    python -m densenet_repro evaluate [--run results/table2/<run>] [--data-root DIR]

The engine's own evaluation (data/loader.py on the device, the fast blocks, channels-last) reported
the run's test error. This recomputes it by another path: the test images decoded straight from
the image-folder archive with PIL, labels from the sorted class folders (torchvision's ImageFolder
rule), the per-channel mean and std computed here from the archive's training images, and the
plain model (`create_model`, no fast blocks, NCHW, fp32) with the weights loaded strictly. The two
agree when the weights and the engine's evaluation are what they say; a few images may flip where
two classes tie to within float rounding, so the result gives the count of images that differ.
Its JSON is written beside the run (independent_eval.json), and report 02 reads it.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densenet_repro import atomic
from densenet_repro.errors import DataReadError
from densenet_repro.runstore import WEIGHTS, read_config, read_summary

RESULT = "independent_eval.json"


def _decode_archive(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """{split: (uint8 images (N, 32, 32, 3), labels, classes)} read with tarfile and PIL only."""
    from PIL import Image

    found: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            parts = m.name.strip("/").split("/")
            if m.isfile() and len(parts) >= 3 and parts[-3] in found:
                found[parts[-3]].append((parts[-2], parts[-1], tar.extractfile(m).read()))
    classes = sorted({c for c, _, _ in found["train"]})
    out = {}
    for split, items in found.items():
        items.sort()
        images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for _, _, b in items])
        out[split] = (images, np.array([classes.index(c) for c, _, _ in items]), classes)
    return out


def evaluate_run(run_dir: str | Path, archive: str | Path, batch_size: int = 500) -> dict[str, Any]:
    """Recompute the test error of a finished run's weights.pt on `archive`; the result dict."""
    from densenet_repro import create_model

    t0 = time.perf_counter()
    run_dir, archive = Path(run_dir), Path(archive)
    summary, config = read_summary(run_dir), read_config(run_dir) or {}
    if not archive.is_file():
        raise DataReadError(f"{archive}: not an image-folder archive; pass --data-root with the run's copy "
                            f"({config.get('data_source_id')})")
    splits = _decode_archive(archive)
    train_x = splits["train"][0].reshape(-1, 3).astype(np.float64) / 255
    mean, std = train_x.mean(0), train_x.std(0)
    test_x, test_y, classes = splits["test"]
    model = create_model(summary["model"], num_classes=len(classes), **(summary.get("model_kwargs") or {}))
    model.load_state_dict(torch.load(run_dir / WEIGHTS, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    logits = []
    with torch.inference_mode():
        for start in range(0, len(test_x), batch_size):
            x = (test_x[start:start + batch_size].astype(np.float32) / 255 - mean) / std
            logits.append(model(torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2).contiguous()))
    predicted = torch.cat(logits).argmax(1).numpy()
    wrong = int((predicted != test_y).sum())
    error = 100.0 * wrong / len(test_y)
    engine_wrong = round(summary["final_test_error_pct"] * len(test_y) / 100)
    return {
        "run": run_dir.name, "weights_sha256": _sha256(run_dir / WEIGHTS), "archive": archive.name,
        "test_images": int(len(test_y)), "wrong": wrong, "test_error_pct": error,
        "engine_final_test_error_pct": summary["final_test_error_pct"],
        "images_that_differ_in_count": abs(wrong - engine_wrong),
        "mean": [round(float(m), 5) for m in mean], "std": [round(float(s), 5) for s in std],
        "path": "PIL decode, numpy normalisation, plain blocks, NCHW, fp32", "torch": torch.__version__,
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_result(run_dir: str | Path, result: dict[str, Any]) -> Path:
    path = Path(run_dir) / RESULT
    atomic.write_json(path, result)
    return path


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RESULT
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
