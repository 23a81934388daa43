"""``carcrawl export``: the crawl's checkpoint -> a dataset a user can train on.

``export(target_dir, fmt, to, ...)`` plans the dataset (:mod:`carcrawl.export.plan`: inclusion,
labels, merges, grouped stratified splits) and writes it in one format
(:mod:`carcrawl.export.formats`). Near-duplicates are found beforehand by
:func:`carcrawl.export.dedup.find_near_duplicates` (the CLI runs it unless ``--no-dedup``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carcrawl.errors import ConfigError
from carcrawl.export.formats import WRITERS, export_parquet
from carcrawl.export.plan import build_plan
from carcrawl.store.dataset import DatasetDB

FORMATS = tuple(WRITERS)

__all__ = ["FORMATS", "ExportSummary", "export", "plan_dataset"]


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote. ``str()`` is the human summary the CLI prints."""

    format: str
    path: str
    scheme: str
    images: int
    classes: int
    splits: dict[str, int]
    per_class: dict[str, dict[str, int]]
    excluded: dict[str, int]
    label_conflicts: int
    missing_from_split: dict[str, list[str]]
    details: dict[str, Any]
    plan_processes: int = 1  # processes that shared the plan's pass

    def __str__(self) -> str:
        lines = [
            f"{self.format}: {self.path}",
            f"  {self.images} images in {self.classes} classes ({self.scheme}): "
            + ", ".join(f"{k} {v}" for k, v in self.splits.items()),
        ]
        if self.plan_processes > 1:
            lines.append(f"  planned by {self.plan_processes} processes, one range of sha256 each")
        if self.excluded:
            shown = list(self.excluded.items())[:8]
            rest = len(self.excluded) - len(shown)
            more = f" and {rest} more reasons ({sum(list(self.excluded.values())[8:])} images)" if rest else ""
            lines.append("  not exported: " + ", ".join(f"{k} {v}" for k, v in shown) + more)
        if self.label_conflicts:
            lines.append(f"  {self.label_conflicts} exported images were found under conflicting labels "
                         "(see label_conflict in the manifest)")
        for split, missing in self.missing_from_split.items():
            if missing:
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                lines.append(f"  warning: {len(missing)} classes have no {split} images: {', '.join(missing[:5])}{more}")
        return "\n".join(lines)


def plan_dataset(target_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """What the plan decides (per-class split counts, exclusions), without writing anything but
    the remembered splits."""
    kwargs.setdefault("workers", None)
    with DatasetDB.open(target_dir) as db:
        plan = build_plan(db, **kwargs)
        return {"per_class": plan.split_counts(), "excluded": plan.excluded_counts(),
                "images": plan.exported_count, "classes": plan.classes}


def export(
    target_dir: str | Path,
    fmt: str = "imagefolder",
    to: str | Path | None = None,
    *,
    scheme: str = "make_model",
    labels: list[str] | None = None,
    ratios: tuple[float, ...] = (0.7, 0.15, 0.15),
    seed: int = 0,
    min_count: int = 1,
    merge_map: Path | dict[str, str | None] | None = None,
    refined: bool = False,
    workers: int | None = None,
) -> ExportSummary:
    """Write the dataset of the crawl in ``target_dir`` as ``fmt`` to ``to`` (default
    ``<target_dir>/export/<fmt>``). Reviewer marks always win; ``refined`` lets the probe's
    scores (``carcrawl refine``) decide instead of the classifier's verdicts. The plan and the
    writer stream the checkpoint: memory does not grow with the crawl (see :mod:`.splits`).
    ``workers`` processes share the plan's pass (None: one per core for a large checkpoint,
    :func:`carcrawl.export.plan.plan_workers`)."""
    if fmt not in WRITERS:
        raise ConfigError(f"--format: expected one of {', '.join(WRITERS)}, got {fmt!r}")
    out = Path(to) if to is not None else Path(target_dir) / "export" / fmt
    with DatasetDB.open(target_dir) as db:
        if refined and db.get_meta("refine.probe") is None:
            raise ConfigError("--refined: no probe yet; run `carcrawl refine` after `carcrawl review import`")
        options = {"scheme": scheme, "labels": labels, "ratios": ratios, "seed": seed, "min_count": min_count,
                   "merge_map": merge_map, "refined": refined, "workers": workers}
        if fmt == "parquet":  # one read of the checkpoint: the plan's pass writes the rows
            plan, details = export_parquet(db, out, **options)
        else:
            plan = build_plan(db, **options)
            db.checkpoint_wal()
            details = WRITERS[fmt](plan, out)
    per_class = plan.split_counts()
    splits = {s: sum(c[s] for c in per_class.values()) for s in ("train", "val", "test")}
    missing = {
        s: [label for label, c in per_class.items() if c[s] == 0]
        for s, share in zip(("train", "val", "test"), plan.ratios, strict=True) if share > 0
    }
    return ExportSummary(
        format=fmt, path=details["path"], scheme=scheme, images=plan.exported_count, classes=len(per_class),
        splits=splits, per_class=per_class, excluded=plan.excluded_counts(),
        label_conflicts=plan.label_conflicts, missing_from_split=missing,
        details=details, plan_processes=plan.parts,
    )
