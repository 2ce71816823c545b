"""The architecture map of notebook 00: boxes and arrows, drawn from a small table instead of 50 cell lines."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

VISION, TEXT, DECODER = "#cfe2f3", "#fce5cd", "#d9ead3"

# (x, y, width, height, text, colour, font size): the numbers in brackets are the notebooks that build each piece
BOXES = (
    (0.1, 4.3, 1.7, 1.2, "image\n224 x 224 px\n(B, 3, 224, 224)", "white", 10),
    (2.4, 4.1, 3.4, 1.6, "SigLIP vision tower  [06]\n14 x 14 patches -> 256 tokens\n27 encoder layers, width 1152\n"
                         "LayerNorm, plain MLP", VISION, 10),
    (7.2, 4.3, 2.3, 1.2, "linear projector  [07]\n1152 -> 2048", VISION, 10),
    (0.1, 1.5, 1.7, 1.2, 'prompt\n"caption en"', "white", 10),
    (2.4, 1.3, 3.4, 1.6, "tokenizer  [07]\n<image> x 256, <bos>, prompt, \\n\n\nembed_tokens x sqrt(2048)  [05]",
     TEXT, 10),
    (7.2, 1.3, 2.3, 1.6, "merge  [07]\nimage features replace\nthe <image> embeddings\n(B, 256 + n, 2048)", TEXT, 9),
    (10.0, 0.6, 3.3, 5.1, "", DECODER, 10),
    (10.25, 1.45, 2.8, 3.65, "x 18 layers:\n\nRMSNorm  [01]\n\nattention  [03]\nRoPE positions  [02]\n"
                             "8 query heads, 1 KV head  [03]\nKV cache  [04]\n\n+ residual\n\nRMSNorm  [01]\n"
                             "gated GELU MLP  [05]\n\n+ residual", "white", 9),
    (13.9, 2.4, 1.9, 1.4, "lm_head (tied)\nlogits over\n257,216 tokens", "white", 10),
)
# (start, end, label): the label sits below a horizontal arrow, right of a vertical one
ARROWS = (
    ((1.8, 4.9), (2.4, 4.9), ""), ((5.8, 4.9), (7.2, 4.9), "(B, 256, 1152)"),
    ((8.35, 4.3), (8.35, 2.95), "(B, 256, 2048)"),
    ((1.8, 2.1), (2.4, 2.1), ""), ((5.8, 2.1), (7.2, 2.1), ""), ((9.5, 2.1), (10.0, 2.1), ""),
    ((13.3, 3.1), (13.9, 3.1), ""),
)


def _box(ax, x, y, width, height, text, colour, size) -> None:
    ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.05", facecolor=colour,
                                edgecolor="black"))
    ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=size)


def _arrow(ax, start, end, label="", **style) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=18, color="black", **style))
    if not label:
        return
    if start[0] == end[0]:  # vertical: label to the right of the middle
        ax.text(start[0] + 0.1, (start[1] + end[1]) / 2, label, ha="left", va="center", fontsize=8.5)
    else:  # horizontal: label centred under the arrow, between the two boxes
        ax.text((start[0] + end[0]) / 2, start[1] - 0.12, label, ha="center", va="top", fontsize=8.5)


def draw_architecture():
    """PaliGemma-3B as boxes and arrows, with the notebook that builds each piece; returns the figure."""
    fig, ax = plt.subplots(figsize=(16, 6.6))
    ax.set_xlim(0, 16)
    ax.set_ylim(-0.4, 6.2)
    ax.axis("off")
    for box in BOXES:
        _box(ax, *box)
    for start, end, label in ARROWS:
        _arrow(ax, start, end, label)
    ax.text(11.65, 5.3, "Gemma decoder  [05]", ha="center", fontsize=11, weight="bold")
    ax.text(11.65, 0.95, "final RMSNorm  [01]", ha="center", va="center", fontsize=10)
    ax.plot([14.85, 14.85, 4.1], [2.35, 0.2, 0.2], color="black", linestyle="--")  # the next token goes back in
    _arrow(ax, (4.1, 0.2), (4.1, 1.25), linestyle="--")
    ax.text(7.0, 0.3, "next token appended, run again: generation  [08]", ha="center", va="bottom", fontsize=9.5,
            style="italic")
    ax.text(8, -0.35, "the prefix (image + prompt) attends both ways, the answer causally  [03, 07]    |    "
            "real weights  [09]", ha="center", fontsize=10)
    ax.set_title("PaliGemma-3B: SigLIP -> linear projector -> Gemma decoder", fontsize=13)
    return fig
