"""curves.png: loss, metrics and LR against epoch, with the decisions marked."""

from __future__ import annotations

from pathlib import Path


def plot_curves(path: Path, history: list[dict], events: list[dict], monitor: str) -> None:
    # The object API, not pyplot: no global figure state, no GUI backend, and a faster import.
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    epochs = [r["epoch"] for r in history]
    metric_keys = [k for k in history[0] if k.startswith("val_") and k != "val_loss"]
    panels = 3 if metric_keys else 2
    fig = Figure(figsize=(8, 2.6 * panels + 0.6))
    axes = fig.subplots(panels, 1, sharex=True)
    loss_ax, lr_ax = axes[0], axes[-1]

    loss_ax.plot(epochs, [r["train_loss"] for r in history], label="train loss", color="#1f77b4")
    loss_ax.plot(epochs, [r["val_loss"] for r in history], label="val loss", color="#d62728")
    if all((r["train_loss"] or 0) > 0 and (r["val_loss"] or 0) > 0 for r in history):
        loss_ax.set_yscale("log")
    loss_ax.set_ylabel("loss")
    if metric_keys:
        for key in metric_keys:
            axes[1].plot(epochs, [r[key] for r in history], label=key)
        axes[1].set_ylabel("metric")
        axes[1].legend(loc="best", fontsize=8)
    lr_ax.plot(epochs, [r["lr"] for r in history], color="#2ca02c", drawstyle="steps-post")
    lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("epoch")

    best = [e for e in events if e["event"] == "new_best"]
    cuts = [e for e in events if e["event"] == "lr_reduced"]
    for ax in axes:
        for cut in cuts:
            ax.axvline(cut["epoch"], color="#ff7f0e", linestyle=":", linewidth=1)
        if best:
            ax.axvline(best[-1]["epoch"], color="#9467bd", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    handles, labels = loss_ax.get_legend_handles_labels()
    if best:
        handles.append(Line2D([], [], color="#9467bd", linestyle="--"))
        labels.append(f"best ({monitor}) epoch {best[-1]['epoch']}")
    if cuts:
        handles.append(Line2D([], [], color="#ff7f0e", linestyle=":"))
        labels.append("LR cut")
    loss_ax.legend(handles, labels, loc="best", fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.98, bottom=0.45 / (2.6 * panels + 0.6) + 0.05,
                        hspace=0.12)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)
