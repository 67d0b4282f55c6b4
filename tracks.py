"""Faces followed from frame to frame: track ids, smoothed probabilities, and a summary per track.

A video's faces are linked into tracks by the overlap of their boxes: each frame's faces are assigned to the
tracks alive so far by the Hungarian method (Kuhn 1955; scipy.optimize.linear_sum_assignment, a well-kept solver
of the assignment problem, rather than a greedy match of our own, which gives a face to the wrong track when two
faces cross), on 1 - IoU of each face's box with its track's last box; a pair overlapping less than min_iou is no
match. A track missed for up to max_missed seconds keeps its id when its face comes back. Each track's class
probabilities are smoothed by an exponential moving average with a time constant of `smooth` seconds, so that a
face keeping one expression does not flicker between labels.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from errors import UserError
from faces import box_ious


@dataclass
class Track:
    """One face followed over time: its id, first and last time seen (seconds), last box (as shares of the frame's
    width and height), smoothed probabilities
    (float array, one per class), frames seen and how many of them wore each label (class index -> count)."""
    id: int
    first_s: float
    last_s: float
    box: tuple
    probabilities: np.ndarray
    frames: int = 1
    label_counts: dict = field(default_factory=dict)


class FaceTracker:
    """Links faces (faces.Face, classified) frame by frame into Tracks; update() gives each face its track id and
    replaces its probabilities by the track's smoothed ones (smooth seconds; 0 keeps each frame's own). UserError
    for a negative smooth or max_missed or min_iou outside (0, 1]."""

    def __init__(self, smooth=0.5, min_iou=0.3, max_missed=1.0):
        if smooth < 0 or max_missed < 0 or not 0 < min_iou <= 1:
            raise UserError(f"smoothing must be 0 or more seconds (got {smooth}), a miss 0 or more seconds (got "
                            f"{max_missed}) and the overlap in (0, 1] (got {min_iou})")
        self.smooth, self.min_iou, self.max_missed = smooth, min_iou, max_missed
        self.tracks, self.alive = [], []

    def update(self, faces, time_s, size=(1, 1)):
        """One frame's faces, seen at time_s (seconds) in a frame of size (width, height) pixels -> their track ids
        (list of int), in order; each face's probabilities become its track's smoothed ones. Boxes are compared as
        shares of their frame's size, so that a stream whose frames change size keeps its tracks."""
        from scipy.optimize import linear_sum_assignment

        self.alive = [t for t in self.alive if time_s - t.last_s <= self.max_missed]
        ids = [None] * len(faces)
        w, h = size
        boxes = [(x / w, y / h, bw / w, bh / h) for x, y, bw, bh in (f.box for f in faces)]
        if faces and self.alive:
            cost = 1 - box_ious(boxes, [t.box for t in self.alive])
            for i, j in zip(*linear_sum_assignment(cost)):
                if 1 - cost[i, j] >= self.min_iou:
                    ids[i] = self._follow(self.alive[j], faces[i], boxes[i], time_s)
        for i, face in enumerate(faces):
            if ids[i] is None:
                track = Track(len(self.tracks), time_s, time_s, boxes[i], np.array(face.probabilities))
                self.tracks.append(track)
                self.alive.append(track)
                ids[i] = self._count(track, face)
        return ids

    def _follow(self, track, face, box, time_s):
        weight = 1.0 if self.smooth == 0 else 1 - math.exp(-(time_s - track.last_s) / self.smooth)
        track.probabilities = track.probabilities + weight * (np.asarray(face.probabilities) - track.probabilities)
        track.box, track.last_s = box, time_s
        track.frames += 1
        face.probabilities = track.probabilities.astype(np.float32)
        return self._count(track, face)

    @staticmethod
    def _count(track, face):
        label = int(np.argmax(face.probabilities))
        track.label_counts[label] = track.label_counts.get(label, 0) + 1
        return track.id

    def summary(self, classes):
        """-> one dict a track: track, first_s, last_s, frames, dominant (the label it wore most often), and
        share_<class> (the share of its frames with that label, 0..1)."""
        rows = []
        for t in self.tracks:
            dominant = max(t.label_counts, key=t.label_counts.get)
            rows.append({"track": t.id, "first_s": round(t.first_s, 3), "last_s": round(t.last_s, 3),
                         "frames": t.frames, "dominant": classes[dominant],
                         **{f"share_{c}": round(t.label_counts.get(k, 0) / t.frames, 4) for k, c in
                            enumerate(classes)}})
        return rows
