"""Run records written by older versions, brought up to date once: `python -m densenet_repro upgrade-runs`.

Two things older versions wrote differently, in config.json:
- the prose description of the data sat in the `data_source` option (so the stored config did not
  validate); it moves to `data_description`, and the option becomes the `auto` every budget used;
- no content fingerprint of the data. It is recorded only after the data at hand is shown to be
  the run's: the same source id, and the image counts and per-channel mean and std (5 decimals over
  every training image) that the run's summary recorded. A run that does not match is left as it is.
"""

from __future__ import annotations

from pathlib import Path

from densenet_repro import atomic, data
from densenet_repro.errors import UserError
from densenet_repro.runstore import read_config, read_summary


def upgrade_runs(results: Path, data_root: str | None = None) -> list[str]:
    """Upgrade every run folder under `results`; one line per folder changed or left as it is."""
    report, loaded = [], {}
    for cfg_file in sorted(results.rglob("config.json")):
        folder = cfg_file.parent
        stored = read_config(folder)
        if stored is None:
            report.append(f"{folder}: config.json cannot be read; left as it is")
            continue
        notes, changed = [], False
        if stored.get("data_source") not in data.SOURCES:
            stored["data_description"] = stored.get("data_description") or stored.get("data_source")
            stored["data_source"] = "auto"
            notes.append("data_source option restored")
            changed = True
        if stored.get("data_fingerprint") is None:
            note, fingerprint = _fingerprint_of_the_runs_data(folder, stored, data_root, loaded)
            notes.append(note)
            if fingerprint is not None:
                stored["data_fingerprint"], changed = fingerprint, True
        if changed:
            atomic.write_json(cfg_file, stored)
        report.append(f"{folder}: " + "; ".join(notes or ["up to date"]))
    return report


def _fingerprint_of_the_runs_data(folder: Path, stored: dict, data_root: str | None,
                                  loaded: dict) -> tuple[str, dict | None]:
    """(what was found, the fingerprint of the data at hand if it is shown to be the run's data)."""
    if not (folder / "summary.json").is_file():
        return "unfinished: it records its fingerprint when it next trains", None
    try:
        summary = read_summary(folder)
        source = data.resolve_source(stored["dataset"], data_root, "auto", download=False)
    except UserError as e:
        return f"no fingerprint ({e})", None
    if source.id != stored.get("data_source_id"):
        return f"no fingerprint: the data at hand is {source.id}, the run's {stored.get('data_source_id')}", None
    key = (stored["dataset"], source)
    if key not in loaded:
        loaded[key] = data.load_data(data.get_spec(stored["dataset"]), source, "cpu").info
    here, recorded = loaded[key], summary.get("data") or {}
    checked = ("train_full", "test_full", "val", "mean", "std")
    differ = [k for k in checked if recorded.get(k) != here.get(k)]
    if differ:
        return f"no fingerprint: the data at hand differs in {', '.join(differ)}", None
    return f"fingerprint recorded ({data.describe_fingerprint(here['fingerprint'])})", here["fingerprint"]
