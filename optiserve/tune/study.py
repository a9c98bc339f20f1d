"""The study file: every trial of a tune, one JSON object per line, appended as each trial ends.

The first line describes the study (model, version, SLO, strategy, load, space, seed; attached
to a running server, also that server's configuration before the tune, which a resumed tune
puts back at the end); each following line is a finished trial. A tune started again on the
same file reads it, checks that it describes the same study, and continues: the configurations
already measured are not measured again (grid and random pick up where they stopped, bayes is
told every recorded trial before it samples the next). A trial cut short by an interruption was
never written, so it runs again. A torn last line (the process killed mid-write) is ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .scoring import Trial

FORMAT = "optiserve-tune-study/1"
#: header fields that must agree for a tune to continue a study
IDENTITY = ("model", "version", "slo_p99_ms", "strategy", "load", "space", "seed")


class StudyError(ValueError):
    """A study file that cannot be continued; the message says why and what to do."""


class StudyFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.header: dict | None = None
        self.trials: list[Trial] = []

    def open(self, header: dict) -> list[Trial]:
        """Start a new study file, or read an existing one and check it is the same study.
        Returns the trials already recorded."""
        header = {"format": FORMAT, **header}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read()
            for k in IDENTITY:
                if self.header.get(k) != header.get(k):
                    raise StudyError(
                        f"{self.path} is a study of a different tune ({k}: "
                        f"{self.header.get(k)!r} there, {header.get(k)!r} now); give another "
                        "--study file to start afresh, or the same options to continue it")
            return list(self.trials)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.header = header
        self._append({"kind": "study", **header})
        return []

    def original_config(self, url: str, current: dict) -> dict:
        """The configuration an attached server had when this study began (its header's
        ``attached``, outside the identity fields), so that a tune killed mid-trial and run
        again restores that one and not the killed trial's; ``current`` when the study was
        begun on another server (or by a tune that started its own)."""
        attached = (self.header or {}).get("attached") or {}
        if attached.get("url") == url and attached.get("deployed_config"):
            return attached["deployed_config"]
        return current

    def _read(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        records, offset = [], 0
        for i, line in enumerate(lines):
            start, offset = offset, offset + len(line) + 1
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                if i == len(lines) - 1:  # torn by a kill mid-write: that trial runs again
                    with open(self.path, "r+b") as f:
                        f.truncate(start)
                    break
                raise StudyError(f"{self.path}:{i + 1} is not JSON; the study file is "
                                 "damaged") from None
        if not records or records[0].get("kind") != "study" or \
                records[0].get("format") != FORMAT:
            raise StudyError(f"{self.path} is not an optiserve tune study file")
        self.header = {k: v for k, v in records[0].items() if k != "kind"}
        self.trials = [Trial.from_json({k: v for k, v in r.items() if k != "kind"})
                       for r in records[1:] if r.get("kind") == "trial"]

    def record(self, trial: Trial) -> None:
        self.trials.append(trial)
        self._append({"kind": "trial", **trial.to_json()})

    def _append(self, obj: dict) -> None:
        data = (json.dumps(obj, default=float) + "\n").encode()
        # a line is only ever appended whole; on a torn write the reader drops the tail
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if self._needs_newline():
                os.write(fd, b"\n")
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _needs_newline(self) -> bool:
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    return False
                f.seek(-1, os.SEEK_END)
                return f.read(1) != b"\n"
        except OSError:
            return False
