"""FER+ vote distributions: from the ten annotators' votes to what a face is trained and scored on.

FER+ (Barsoum, Zhang, Canton Ferrer, Zhang, "Training deep networks for facial expression recognition with
crowd-sourced label distribution", ICMI 2016) relabelled every FER2013 face by ten annotators into eight
emotions plus "unknown" and "not a face" (NF). Each face's row holds the ten vote counts in VOTE_COLUMNS order.

The paper's four training schemes, as `label_modes` builds them from the votes (single votes are outliers and
dropped first, in every mode, as the paper does):
- majority: faces whose top emotion holds more than half of the remaining votes, trained on it as one label;
- probability: a hard label drawn afresh every epoch from the face's emotion-vote distribution;
- crossentropy: the emotion-vote distribution itself as the target;
- multi_target: every emotion with at least 30% of the votes counts as right (the loss is -log of the highest
  probability among them, as Microsoft's FERPlus code trains it).
Faces whose target is not an emotion of the class list (their votes go mostly to unknown, NF or emotions left
out of --classes) are left out of training and counted. Validation and test faces are scored on the majority
protocol: faces with a majority emotion, accuracy of the argmax against it.
"""
import torch

EMOTIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
VOTE_COLUMNS = (*EMOTIONS, "unknown", "NF")
LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target")
MULTI_TARGET_SHARE = 0.3  # an emotion with at least this share of a face's votes counts as right


def clean(votes):
    """Vote counts (float N x 10, VOTE_COLUMNS order) with single votes set to 0: the paper's outlier removal."""
    return torch.where(votes > 1, votes, torch.zeros_like(votes))


def columns_of(classes):
    """The VOTE_COLUMNS index of each class name (case-insensitive); ValueError for a name FER+ lacks."""
    index = {c.lower(): i for i, c in enumerate(EMOTIONS)}
    missing = [c for c in classes if c.lower() not in index]
    if missing:
        raise ValueError(f"FER+ has no emotion {', '.join(missing)}; it has {', '.join(EMOTIONS)}")
    return [index[c.lower()] for c in classes]


def label_mode(votes, classes, mode):
    """What `mode` trains (or, for "majority", scores) each face on.

    votes: float N x 10 raw counts; classes: the emotions kept, in model order. -> (keep: bool N, labels: long N
    index into classes of each face's top emotion, targets: float N x len(classes) or None, left_out: dict of
    reason -> count). targets are the emotion-vote distribution (probability, crossentropy) or the 0/1 mask of
    emotions counted right (multi_target); majority needs only labels.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {mode!r}; choose from {', '.join(LABEL_MODES)}")
    votes = clean(votes.float())
    total = votes.sum(1)
    chosen = votes[:, columns_of(classes)]
    top, labels = chosen.max(1)
    other = votes.clone()
    other[:, columns_of(classes)] = 0
    if mode == "majority":
        keep = top > 0.5 * total
        targets = None
    elif mode in ("probability", "crossentropy"):
        # The target is an emotion distribution: the kept emotions hold more than half of the votes and the
        # top category is one of them, not unknown, NF or a left-out emotion.
        keep = (chosen.sum(1) > 0.5 * total) & (top > other.max(1).values)
        targets = chosen / chosen.sum(1, keepdim=True).clamp(min=1)
    else:
        mask = chosen >= MULTI_TARGET_SHARE * total.unsqueeze(1)
        keep = mask.any(1) & ((chosen * mask).sum(1) > 0.5 * total)
        targets = mask.float()
    keep &= total > 0
    left_out = {}
    if (~keep).any():
        # Why a face is out: where most of its votes went.
        unknown, not_a_face = votes[:, VOTE_COLUMNS.index("unknown")], votes[:, VOTE_COLUMNS.index("NF")]
        reason_nf = ~keep & (not_a_face >= unknown) & (not_a_face >= top) & (not_a_face > 0)
        reason_unknown = ~keep & ~reason_nf & (unknown >= top) & (unknown > 0)
        rest = ~keep & ~reason_nf & ~reason_unknown
        for reason, mask_ in (("not a face", reason_nf), ("unknown", reason_unknown),
                              ("no clear emotion" if mode != "majority" else "no majority emotion", rest)):
            if mask_.any():
                left_out[reason] = int(mask_.sum())
    return keep, labels, targets, left_out


def vote_distribution(votes, classes):
    """Each face's distribution over `classes` of its votes, single votes dropped (float N x len(classes));
    a face with no such vote gets zeros."""
    chosen = clean(votes.float())[:, columns_of(classes)]
    return chosen / chosen.sum(1, keepdim=True).clamp(min=1)


class MultiTargetLoss(torch.nn.Module):
    """-log of the highest probability among the emotions counted right: the loss Microsoft's FERPlus code
    trains multi_target with (mask: float N x classes, 1 where an emotion counts as right)."""

    def forward(self, logits, mask):
        log_p = torch.log_softmax(logits.float(), 1)
        return -(log_p.masked_fill(mask <= 0, float("-inf")).amax(1)).mean()
