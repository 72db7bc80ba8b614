"""`voicefarm batch LINES.csv --voice V --out DIR`: one command from a CSV to files named by line id.

Resumable. Its state lives in DIR/.voicefarm-batch.json; the batch's Idempotency-Key is derived from the file's
content and the options, so a second run after Ctrl-C, a lost network or a farm restart submits nothing new (the
farm answers the same key with the batch it made, and a run that finds its state does not even ask), and
downloads only the lines whose file is missing. Each file is written whole (`.{name}.part`, checked against the
farm's sha256, then renamed). When every line is done it writes DIR/manifest.csv and exits 0, or 1 naming the
lines that failed or were canceled; when the QA gate flagged lines it says how many wait for a person's decision
and where the batch's review page is.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from voicefarm.client.api import ApiError, Client, ManifestLine

STATE = ".voicefarm-batch.json"
MANIFEST_COLUMNS = (
    "line_id", "file", "status", "job_id", "take", "duration_s", "sha256", "attempts", "cached", "error_code",
    "error_message", "qa", "review",
)  # fmt: skip


@dataclass
class BatchRun:
    client: Client
    lines_file: Path
    out: Path
    defaults: dict[str, Any]
    name: str = ""
    poll_s: float = 1.0
    progress: bool = True
    state: dict[str, Any] = field(default_factory=dict)
    # The batch as last seen: its review counts are reported at the end.
    batch: dict[str, Any] = field(default_factory=dict)

    @property
    def state_path(self) -> Path:
        return self.out / STATE

    def idempotency_key(self) -> str:
        digest = hashlib.sha256(self.lines_file.read_bytes())
        digest.update(json.dumps(self.defaults, sort_keys=True).encode())
        return f"cli-batch-{digest.hexdigest()[:48]}"

    def load_state(self, key: str) -> None:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            state = {}
        # State of another file (or other options) in the same DIR is not ours to resume.
        self.state = state if state.get("idempotency_key") == key else {"idempotency_key": key}
        self.state.setdefault("downloaded", {})

    def save_state(self) -> None:
        partial = self.state_path.with_suffix(".part")
        partial.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        partial.replace(self.state_path)

    def submit(self) -> str:
        if self.state.get("batch_id"):
            return str(self.state["batch_id"])
        view = self.client.create_batch(
            file=self.lines_file, defaults=self.defaults, name=self.name, idempotency_key=self.state["idempotency_key"]
        )
        self.state["batch_id"] = view["id"]
        self.save_state()
        return str(view["id"])

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.load_state(self.idempotency_key())
        try:
            batch_id = self.submit()
        except KeyboardInterrupt:
            print("\ninterrupted before the batch was accepted; run the same command again", file=sys.stderr)
            return 130
        except ApiError as exc:
            print(f"the batch was refused: {exc}", file=sys.stderr)
            for problem in (exc.body or {}).get("error", {}).get("lines", [])[:50]:
                print(f"  line {problem['line']} ({problem.get('id')}): {problem['field']}: {problem['message']}")
            return 2
        bar = tqdm(total=0, unit="line", disable=not self.progress, dynamic_ncols=True, desc=f"batch {batch_id[:8]}")
        try:
            lines = self._follow(batch_id, bar)
        except KeyboardInterrupt:
            self.save_state()
            bar.close()
            print(f"\ninterrupted; run the same command again to resume batch {batch_id}", file=sys.stderr)
            return 130
        bar.close()
        code = self._finish(lines)
        self._report_reviews(batch_id)
        return code

    def _follow(self, batch_id: str, bar: tqdm) -> list[ManifestLine]:
        done_seen = -1
        lines: list[ManifestLine] = []
        while True:
            try:
                batch = self.client.get_batch(batch_id)
                self.batch = dict(batch)
                bar.total = batch["lines"]
                counts = batch["counts"]
                done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "canceled"))
                bar.update(done - bar.n)
                if done != done_seen or batch["done"]:
                    lines = self.client.manifest(batch_id)
                    self._download(lines)
                    done_seen = done
                bar.set_postfix_str(
                    f"audio {batch['audio_seconds']:.0f}s, downloaded {len(self.state['downloaded'])}, "
                    f"failed {counts.get('failed', 0)}"
                )
                if batch["done"] and all(self._have(line) for line in lines if line["status"] == "succeeded"):
                    return lines
            except (requests.ConnectionError, requests.Timeout, ApiError) as exc:
                # The farm or its storage away for a while (a restart, an outage): wait and go on.
                retryable = exc.status in (0, 429, 500, 502, 503, 504) if isinstance(exc, ApiError) else True
                if not retryable and not (isinstance(exc, ApiError) and exc.code == "download_failed"):
                    raise
                bar.write(f"farm unreachable ({type(exc).__name__}); retrying")
                time.sleep(max(self.poll_s, 2.0))
                continue
            time.sleep(self.poll_s)

    def _have(self, line: ManifestLine) -> bool:
        name = line.get("file")
        return (
            bool(name) and self.state["downloaded"].get(name) == line.get("sha256") and (self.out / str(name)).exists()
        )

    def _download(self, lines: list[ManifestLine]) -> None:
        for line in lines:
            if line["status"] != "succeeded" or self._have(line):
                continue
            name = str(line["file"])
            target = self.out / name
            if target.exists() and _sha256(target) == line.get("sha256"):
                self.state["downloaded"][name] = line["sha256"]  # downloaded by a run that died before saving
                continue
            self.state["downloaded"][name] = self.client.download(line, target)
            self.save_state()

    def _finish(self, lines: list[ManifestLine]) -> int:
        with (self.out / "manifest.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for line in lines:
                writer.writerow({k: "" if line.get(k) is None else line.get(k) for k in MANIFEST_COLUMNS})
        self.save_state()
        bad = [line for line in lines if line["status"] != "succeeded"]
        ok = len(lines) - len(bad)
        print(f"{ok} of {len(lines)} lines in {self.out} (manifest.csv)")
        if bad:
            named = ", ".join(f"{line['line_id']} ({line.get('error_code') or line['status']})" for line in bad[:50])
            more = f" and {len(bad) - 50} more" if len(bad) > 50 else ""
            print(f"{len(bad)} lines did not succeed: {named}{more}", file=sys.stderr)
            return 1
        return 0

    def _report_reviews(self, batch_id: str) -> None:
        """How many lines the QA gate flagged wait for a decision, and the review page's address."""
        flagged = int((self.batch.get("reviews") or {}).get("flagged") or 0)
        if not flagged:
            return
        pending = int(self.batch.get("pending_reviews") or 0)
        page = f"{self.client.url}/batches/{batch_id}/review"
        if pending:
            print(f"{pending} of {flagged} lines flagged by the QA gate wait for review: {page}")
        else:
            print(f"the {flagged} lines flagged by the QA gate are reviewed: {page}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()
