"""Which one to use: a decision guide by situation, each line citing what these runs
measured (with its interval, from the experiments' headlines) and the published
result behind it. A line recommends nothing on a difference the seeds do not
resolve: where our runs do not decide, it says so and rests on the paper alone, and
where they contradict the paper, it says that."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from normlab.experiments import stats
from normlab.experiments.analysis import compare, spread
from normlab.experiments.suite.lr import largest_trained


@dataclass(frozen=True)
class Advice:
    situation: str
    technique: str
    why: str
    evidence: str  # ours, with the section it comes from, then the literature


WORDS = {
    stats.HIGHER: "ahead",
    stats.LOWER: "behind",
    stats.SAME: f"the same within ±{stats.MARGIN:g}",
    stats.UNRESOLVED: "not resolved by the seeds",
}


def _row(headline: pd.DataFrame, norm: str, **where) -> pd.Series | None:
    rows = headline[headline.norm == norm]
    for field, value in where.items():
        rows = rows[rows[field] == value]
    return None if rows.empty else rows.iloc[0]


def _versus(a: pd.Series, b: pd.Series, name_a: str, name_b: str) -> str:
    gap = compare(a, b)
    return f"{name_a} {spread(a)}, {name_b} {spread(b)}: {name_a} {WORDS[gap.verdict]} ({gap})"


def _large_batch(headlines: dict) -> Advice:
    evidence = "not measured in these runs"
    table = headlines.get("batch-size")
    if table is not None and len(table):
        largest = table.batch_size.max()
        bn, gn = (
            _row(table, "batchnorm", batch_size=largest),
            _row(table, "groupnorm", batch_size=largest),
        )
        if bn is not None and gn is not None:
            evidence = f"batch {int(largest)}: " + _versus(bn, gn, "BatchNorm", "GroupNorm")
            evidence += " (see Batch size)"
    lr = headlines.get("lr")
    if lr is not None and {"batchnorm", "none"} <= set(lr.norm):
        largest = largest_trained(lr)
        shown = [n for n in ("batchnorm", "groupnorm", "none") if n in largest]
        evidence += (
            "; largest learning rate at which every seed trained: "
            + ", ".join(f"{n} {largest[n]:g}" for n in shown)
            + " (see Learning rate)"
        )
    return Advice(
        "A CNN at 16 or more images per device",
        "BatchNorm (GroupNorm close behind)",
        "batch statistics are reliable at this size, and BatchNorm folds into the "
        "preceding convolution for inference",
        evidence + ". Published: ResNet-50 on ImageNet at 32 images per GPU, BatchNorm "
        "23.6% error, GroupNorm 24.1% (Wu & He, 2018, Table 2).",
    )


def _small_batch(headlines: dict) -> Advice:
    evidence = "not measured in these runs"
    table = headlines.get("batch-size")
    if table is not None and len(table):
        smallest = table.batch_size.min()
        bn = _row(table, "batchnorm", batch_size=smallest)
        gn = _row(table, "groupnorm", batch_size=smallest)
        if bn is not None and gn is not None:
            gap = compare(gn, bn)
            evidence = f"batch {int(smallest)}: " + _versus(gn, bn, "GroupNorm", "BatchNorm")
            if gap.verdict in (stats.LOWER, stats.SAME):
                evidence += (
                    "; BatchNorm did not fall behind in these runs (a small network and "
                    "data set, few epochs: the paper's effect did not reproduce here), so "
                    "measure on your model"
                )
            evidence += " (see Batch size)"
    return Advice(
        "A CNN with small or uneven batches per device (detection, segmentation, video: "
        "1–4 images per device)",
        "GroupNorm; SyncBatchNorm where the devices can synchronize every step; "
        "FrozenBatchNorm when fine-tuning a pretrained backbone",
        "BatchNorm's statistics from a handful of images are noisy and differ between "
        "training and inference; GroupNorm's come from each image alone",
        evidence + ". Published: at 2 images per GPU, BatchNorm 34.7% error, GroupNorm "
        "24.1% (Wu & He, 2018, Table 2).",
    )


def _fine_tuning() -> Advice:
    return Advice(
        "Fine-tuning a pretrained CNN (a detection backbone) with small batches",
        "FrozenBatchNorm (normlab.freeze_batchnorm)",
        "the pretrained statistics are kept instead of being re-estimated from tiny "
        "batches; the affine is fixed too",
        "not measured in these runs. Published: the practice of Detectron and torchvision; "
        "Wu & He (2018) compare it with GroupNorm fine-tuned end to end on COCO.",
    )


def _transformers(headlines: dict) -> Advice:
    evidence = []
    table = headlines.get("transformer")
    if table is not None and len(table):
        ln, rms = (
            _row(table, "layernorm", norm_position="pre"),
            _row(table, "rmsnorm", norm_position="pre"),
        )
        dyt = _row(table, "dyt", norm_position="pre")
        if ln is not None and rms is not None:
            evidence.append("pre-norm: " + _versus(rms, ln, "RMSNorm", "LayerNorm"))
        if ln is not None and dyt is not None:
            evidence.append(_versus(dyt, ln, "DyT", "LayerNorm") + " (see In a transformer)")
    placement = headlines.get("placement")
    if placement is not None and len(placement):
        depth, lr = placement.depth.max(), placement.lr.max()
        deep = placement[(placement.depth == depth) & (placement.lr == lr)]
        post = deep[deep.norm_position == "post"]
        failed = sorted(post[post.outcome != "trained"].norm)
        if failed:
            evidence.append(
                f"post-norm did not train at depth {int(depth)}, Adam lr {lr:g}, no warm-up, "
                f"with {', '.join(failed)}"
            )
            calm = placement[
                (placement.depth == depth)
                & (placement.lr < lr)
                & (placement.norm_position == "post")
                & (placement.outcome == "trained")
            ]
            if len(calm):
                evidence[-1] += (
                    f", but did at lr {calm.lr.max():g} with {', '.join(sorted(calm.norm))}"
                )
            evidence[-1] += " (see Where the norm goes)"
    ours = "; ".join(evidence) if evidence else "not measured in these runs"
    return Advice(
        "Transformers and language models",
        "LayerNorm or RMSNorm, before each sublayer (pre-norm), with a learning-rate warm-up",
        "per-token statistics need no batch; pre-norm tolerates large learning rates and a "
        "short warm-up better than post-norm; RMSNorm drops the mean (cheaper in fused "
        "kernels; in normlab's eager CPU code it is slower: see Cost)",
        ours + ". Published: Xiong et al. (2020) on pre- vs post-norm; Zhang & Sennrich "
        "(2019) on RMSNorm; Zhu et al. (2025) on DyT matching LayerNorm.",
    )


def _conditioning() -> Advice:
    return Advice(
        "Conditioning on a class, a time step or a prompt (diffusion models)",
        "adaptive LayerNorm, γ and β predicted from the condition (normlab.AdaptiveLayerNorm)",
        "the condition modulates every block at the cost of a linear map",
        "not measured in these runs. Published: adaLN-Zero in DiT (Peebles & Xie, 2023).",
    )


def _deployment(headlines: dict) -> Advice:
    evidence = "not measured in these runs"
    table = headlines.get("cost")
    if table is not None and len(table) and "x_none" in table:
        cells = table.set_index("norm").x_none
        shown = [n for n in ("batchnorm", "layernorm", "groupnorm", "rmsnorm", "dyt") if n in cells]
        if shown:
            evidence = (
                "training-step cost relative to no normalization, eager CPU: "
                + ", ".join(f"{n} {cells[n]:.2f}×" for n in shown)
                + " (see Cost; this is normlab's CPU implementation, not inference after folding)"
            )
    return Advice(
        "Inference deployment",
        "BatchNorm, folded into the preceding convolution (normlab.fold_batchnorm)",
        "in eval mode BatchNorm is a fixed affine map, which folds into the convolution's "
        "weights; LayerNorm, GroupNorm and RMSNorm compute statistics on every input (only "
        "their affine can fold into the next linear map)",
        evidence + "; the folded model's speed is not measured here.",
    )


def advice(headlines: dict[str, pd.DataFrame]) -> list[Advice]:
    """The guide's lines, in the order a practitioner scans them."""
    return [
        _large_batch(headlines),
        _small_batch(headlines),
        _fine_tuning(),
        _transformers(headlines),
        _conditioning(),
        _deployment(headlines),
    ]
