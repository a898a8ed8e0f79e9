"""The utilization RPC answer (node.rpc.utilization) -> CSV tables and PNG charts in a directory.

Runs on the client (``radchain report utilization``), so nodes never need matplotlib. matplotlib is
imported here only, with the Agg backend (no display, no GUI toolkit), and is an optional dependency
(``pip install radchain[reports]``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from node.rpc.utilization import KINDS

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def write_csv(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def table(name: str, header: list[str], rows) -> None:
        path = out / name
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)
        written.append(path)

    table("by_member.csv", ["member", *KINDS],
          ([m, *(row[k] for k in KINDS)] for m, row in sorted(report["by_member"].items())))
    table("by_modality.csv", ["modality", "studies", "instances"],
          ([m, r["studies"], r["instances"]] for m, r in sorted(report["by_modality"].items())))
    table("by_weekday.csv", ["weekday", *KINDS],
          ([WEEKDAYS[d], *(report["by_weekday"][k][d] for k in KINDS)] for d in range(7)))
    table("by_hour.csv", ["hour_utc", *KINDS],
          ([h, *(report["by_hour"][k][h] for k in KINDS)] for h in range(24)))
    table("store_to_first_read.csv", ["minutes"], ([f"{m:.3f}"] for m in report["store_to_first_read"]["minutes"]))
    s = report["store_to_first_read"]
    table("summary.csv", ["metric", "value"], [
        ["since_ms", report["since"]], ["until_ms", report["until"]], ["txs_scanned", report["scanned"]],
        ["truncated", report["truncated"]], ["studies", report["studies"]],
        ["repeat_studies", report["repeat_studies"]], ["repeat_days", report["repeat_days"]],
        ["repeat_rate", f"{report['repeat_rate']:.4f}"], ["read_studies", s["studies"]],
        *([[f"read_minutes_{k}", f"{s[k]:.3f}"] for k in ("min", "median", "p90", "max")] if s["studies"] else []),
    ])
    return written


def write_redundancy_csv(report: dict, out: Path) -> Path:
    """The redundancy RPC answer as one row per repeat pair (patient tokens only)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "redundancy.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_token", "modality", "body_part", "days_apart", "cross_hospital", "first_member",
                    "first_study_token", "first_date", "repeat_member", "repeat_study_token", "repeat_date"])
        for r in report["repeats"]:
            w.writerow([r["patient"], r["modality"], r["body_part"], r["days_apart"], r["cross_hospital"],
                        r["first"]["member"], r["first"]["study"], r["first"]["date"],
                        r["repeat"]["member"], r["repeat"]["study"], r["repeat"]["date"]])
    return path


def write_charts(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    shown = ("studies", "reads", "exports", "queries")

    def save(fig, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    members = sorted(report["by_member"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(shown)
    for i, k in enumerate(shown):
        ax.bar([x + i * width for x in range(len(members))], [report["by_member"][m][k] for m in members],
               width, label=k)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(members))], members)
    ax.set_ylabel("count")
    ax.set_title("Activity per hospital")
    ax.legend()
    save(fig, "by_member.png")

    for name, labels, key, title in (("by_weekday.png", WEEKDAYS, "by_weekday", "Activity per weekday (UTC)"),
                                     ("by_hour.png", [str(h) for h in range(24)], "by_hour", "Activity per hour (UTC)")):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for k in shown:
            ax.plot(labels, report[key][k], marker="o", label=k)
        ax.set_ylabel("count")
        ax.set_title(title)
        ax.legend()
        save(fig, name)

    modalities = sorted(report["by_modality"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.bar(modalities or ["none"], [report["by_modality"][m]["studies"] for m in modalities] or [0])
    ax.set_ylabel("studies stored")
    ax.set_title("Studies per modality")
    save(fig, "by_modality.png")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    minutes = report["store_to_first_read"]["minutes"]
    ax.hist(minutes or [0], bins=min(30, max(1, len(minutes))))
    ax.set_xlabel("minutes from first store to first read")
    ax.set_ylabel("studies")
    ax.set_title(f"Store to first read (repeat rate {report['repeat_rate']:.1%})")
    save(fig, "store_to_first_read.png")
    return written
