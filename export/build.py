"""`python -m export build`: resolve a checkpoint, export its variant's graphs, stage them into the repository."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from . import checkpoints
from .staging import current_manifest, exporter_digest, remove_abandoned_staging, stage
from .variants import variant_for

log = logging.getLogger(__name__)


def build(
    source: str, repository: Path, precision: str = "fp32", fallback: str | None = None, skip_if_current: bool = False
) -> dict:
    """Export `source` into `repository` (model dirs must exist: they hold config.pbtxt). Returns the manifest."""
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(repository)  # also when the export itself is skipped: the server reads the folder
    if skip_if_current:
        current = current_manifest(repository)
        if (
            current
            and current.get("source") == source
            and current.get("precision") == precision
            and current.get("exporter") == exporter_digest()
        ):
            log.info("repository already holds an export of %s (%s); skipping", source, precision)
            return current
    try:
        resolved = checkpoints.resolve(source)
    except checkpoints.CheckpointError as exc:
        if not fallback:
            raise
        log.warning(
            "\n%s\n!! %s\n!! FALLING BACK TO THE '%s' PRESET: ITS WEIGHTS ARE RANDOM AND IT MAKES NOISE,"
            " NOT MUSIC.\n%s",
            "!" * 100,
            exc,
            fallback,
            "!" * 100,
        )
        resolved = checkpoints.resolve(fallback)
    t0 = time.time()
    model, tokenizer = checkpoints.load(resolved.path)
    variant = variant_for(model.config.model_type)
    return stage(variant, source, resolved, model, tokenizer, repository, precision, t0)
