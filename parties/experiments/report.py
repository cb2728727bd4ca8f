"""The experiments' outputs: ``experiments.json``, a markdown table (mean ± sd over seeds) and two plots."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from mpc_agg.errors import ConfigError

__all__ = ["write_outputs", "markdown_table", "group_rows", "check_out_dir", "OUTPUTS"]

OUTPUTS = ("experiments.json", "experiments.md", "experiments-curves.png", "experiments-attacks.png")

COLUMNS = [("ppl_seen", "ppl seen", "{:,.0f}"), ("ppl_unseen", "ppl unseen", "{:,.0f}"),
           ("rounds_to_target", "rounds to 1.1× centr.", "{:.1f}"), ("seconds_to_target", "s to target", "{:.0f}"),
           ("mia_loss_auc", "MIA AUC (loss)", "{:.3f}"), ("mia_ref_auc", "MIA AUC (ref)", "{:.3f}"),
           ("mia_tpr_at_1pct_fpr", "TPR@1%FPR", "{:.3f}"), ("token_precision", "token P", "{:.3f}"),
           ("token_recall", "token R", "{:.3f}"), ("epsilon", "ε", "{:.1f}")]


def _label(row: dict[str, Any]) -> str:
    z = row.get("noise_multiplier")
    return row["setting"] if z is None else f"{row['setting']} (z={z:g})"


def group_rows(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows by setting label (secure-dp split by noise multiplier), in first-seen order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_label(row), []).append(row)
    return groups


def _cell(values: list[Any], fmt: str) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "—"
    text = fmt.format(statistics.fmean(got))
    if len(got) > 1:
        text += " ± " + fmt.format(statistics.stdev(got))
    if len(got) < len(values):
        text += f" ({len(got)}/{len(values)} seeds)"
    return text


def markdown_table(report: dict[str, Any]) -> str:
    """One line per setting: mean ± sd over seeds; "—" where not applicable or never reached."""
    head = ["setting", "seeds"] + [c[1] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    init = report["initial"]
    lines.append("| initial model | — | " + " | ".join(_cell([init.get(key)], fmt) for key, _, fmt in COLUMNS) + " |")
    for label, rows in group_rows(report["rows"]).items():
        cells = [_cell([r.get(key) for r in rows], fmt) for key, _, fmt in COLUMNS]
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(cells) + " |")
    worst = [r for r in report["rows"] if r["setting"] == "local-only"]
    if worst:
        lines.append(f"| local-only, worst client | {len(worst)} | "
                     f"{_cell([r['ppl_seen_worst'] for r in worst], '{:,.0f}')} | "
                     f"{_cell([r['ppl_unseen_worst'] for r in worst], '{:,.0f}')} |" + " — |" * (len(COLUMNS) - 2))
    delta = next((r["delta"] for r in report["rows"] if r["delta"] is not None), None)
    if delta is not None:
        lines.append(f"\nε at δ = {delta:g} (user-level, mpc_agg.dp accountant).")
    return "\n".join(lines) + "\n"


def _plot_curves(report: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, rows in group_rows(report["rows"]).items():
        curves = [r["curve_ppl_seen"] for r in rows]
        length = min(len(c) for c in curves)
        mean = [math.exp(statistics.fmean(math.log(c[i]) for c in curves)) for i in range(length)]
        ax.plot(range(length + 1), [report["initial"]["ppl_seen"]] + mean, marker="o", ms=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("round (0 = initial model)")
    ax.set_ylabel("held-out perplexity, seen topics")
    ax.set_title("Perplexity per round (geometric mean over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_attacks(report: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    groups = group_rows(report["rows"])
    labels = list(groups)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, keys, title in ((axes[0], ("mia_loss_auc", "mia_ref_auc"), "Membership inference ROC-AUC"),
                            (axes[1], ("token_precision", "token_recall"), "Token-set attack on what the server sees")):
        for j, key in enumerate(keys):
            vals = [statistics.fmean([r[key] for r in groups[g] if r.get(key) is not None] or [math.nan])
                    for g in labels]
            xs = [i + 0.4 * j for i in range(len(labels))]
            ax.bar(xs, vals, width=0.4, label=key)
            for x, v in zip(xs, vals):  # tell "0" from "not applicable"
                ax.text(x, (0 if math.isnan(v) else v) + 0.01, "n/a" if math.isnan(v) else f"{v:.2f}",
                        ha="center", va="bottom", fontsize=6)
        ax.set_xticks([i + 0.2 for i in range(len(labels))], labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    axes[0].axhline(0.5, color="grey", lw=0.8, ls="--")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_out_dir(out: Path) -> None:
    """Refuse, before any training, an ``--out`` that is a file or holds an ``experiments.json`` that is not
    an experiments report: the run replaces only its own four files (``OUTPUTS``), from an earlier run."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    old = out / "experiments.json"
    if old.exists():
        try:
            ours = {"initial", "rows"} <= set(json.loads(old.read_text("utf-8")))
        except (ValueError, UnicodeDecodeError, TypeError):
            ours = False
        if not ours:
            raise ConfigError(f"--out {out}: {old} is not an experiments report; choose another directory")


def write_outputs(report: dict[str, Any], out: Path) -> None:
    """``experiments.json``, ``experiments.md``, ``experiments-curves.png`` and ``experiments-attacks.png``."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiments.json").write_text(json.dumps(report, indent=1))
    (out / "experiments.md").write_text(markdown_table(report))
    _plot_curves(report, out / "experiments-curves.png")
    _plot_attacks(report, out / "experiments-attacks.png")
