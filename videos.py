"""Videos: reading a file's frames, and the one path from a video to its outputs (annotated video, per-frame rows,
tracks summary, timeline picture) that predict.py --video and the page's video tab share."""
import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from errors import UserError, not_a_file
from faces import annotate
from photos import Results
from tracks import FaceTracker

MOV_SUFFIXES = (".mp4", ".m4v", ".mov", ".3gp")  # QuickTime's file layout, whose index may come last


class VideoFrames:
    """The frames of a video file, decoded by PyAV (FFmpeg's libraries): iterate for uint8 H x W x 3 BGR arrays,
    each at its own size, turned as a player shows it (upright). OpenCV's reader scales every frame to the first
    one's size, so a stream whose frames change size (an MJPEG stream of 640x480, then 1280x720 frames) gave boxes
    in squeezed coordinates; and PyAV says why reading stopped. fps: frames a second (25 when the file does not
    say); promised: the frame count the file's header gives (0 when unknown); read: how many were read so far;
    stopped: why decoding ended early, or None. UserError for a path that is missing, a folder, a still image, not
    a video, or a video of which no frame can be decoded (its first frame is decoded here, so a caller makes no
    output folder for a file that yields nothing), naming it as `called` (a flag, say)."""

    def __init__(self, path, called="video"):
        import av

        self.path, self.called = Path(path), called
        why = not_a_file(self.path, "a video")
        if why:
            raise UserError(f"{called} {self.path} {why}")
        try:
            self.container = av.open(str(self.path))
        except (av.FFmpegError, OSError, ValueError) as e:
            # An MP4 or MOV keeps its index (the moov box) at the end: one cut off while recording or copying
            # cannot be opened at all, and FFmpeg says only "Invalid data".
            hint = ("; an MP4 or MOV cut off while recording or copying lacks the index at its end and cannot be "
                    "read: copy it again, or repair it (e.g. with untrunc)"
                    if isinstance(e, av.InvalidDataError) and self.path.suffix.lower() in MOV_SUFFIXES else "")
            raise UserError(f"{called} {self.path} cannot be opened as a video ({_first_line(e)}){hint}") from None
        if not self.container.streams.video:
            self.container.close()
            raise UserError(f"{called} {self.path} cannot be opened as a video (it has no video stream)")
        # FFmpeg reads a JPEG or PNG as a one-frame video (its image demuxers), which would give a one-frame video
        # of a photo (a GIF of one frame too); several images in a row (an MJPEG stream, an animated GIF) are a video.
        name = self.container.format.name
        if name in ("image2", "gif") or name.endswith("_pipe"):
            stream = self.container.streams.video[0]
            images = sum(1 for _, packet in zip(range(2), self.container.demux(stream)) if packet.size)
            self.container.close()
            if images < 2:
                raise UserError(f"{called} {self.path} is a still image, not a video: score it as a photo")
            self.container = av.open(str(self.path))  # from the start again
        self.stream = self.container.streams.video[0]
        self.fps = float(self.stream.average_rate or self.stream.guessed_rate or 25.0)
        self.promised = max(0, int(self.stream.frames or 0))
        self.read, self.stopped = 0, None
        self._frames = self._decode()
        self._first = next(self._frames, None)
        if self._first is None:
            why = f" ({self.stopped})" if self.stopped else ""
            raise UserError(f"{called} {self.path}: no frame could be read{why}")

    def __iter__(self):
        yield self._first
        yield from self._frames

    def _decode(self):
        import av

        try:
            for frame in self.container.decode(self.stream):
                self.read += 1
                yield upright(frame.to_ndarray(format="bgr24"), frame.rotation)
        except av.FFmpegError as e:  # a damaged or truncated file: the frames before it are kept
            self.stopped = _first_line(e)
        finally:
            self.container.close()

    def shortfall(self):
        """What to say when decoding stopped early or fewer frames were read than the header promised, or None."""
        if self.stopped or (self.promised and self.read < self.promised):
            promised = f" of the {self.promised} its header promises" if self.promised else ""
            why = f" ({self.stopped})" if self.stopped else ""
            return (f"{self.path}: reading stopped at frame {self.read}{promised}{why}; the frames read are kept "
                    "(a truncated or damaged file?)")
        return None


def upright(pixels, rotation):
    """A decoded frame (H x W x C) turned as its file's display matrix says a player shows it: rotation is PyAV's
    frame.rotation, degrees counter-clockwise (a phone held upright records -90 or 90), turned in quarter turns as
    FFmpeg's own player turns it."""
    quarter_turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(pixels, quarter_turns)) if quarter_turns else pixels


def _first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:120]


@dataclass
class VideoOutputs:
    """What process_video wrote and counted: the annotated video (None when the codec could not write it), the
    frames CSV and JSON, the tracks CSV, the timeline PNG (None without a track), frames read, face detections, tracks,
    the tracks' summary rows, and warnings and notes to show."""
    annotated: Path
    frames_csv: Path
    frames_json: Path
    tracks_csv: Path
    timeline: Path
    frames: int
    detections: int
    tracks: int
    summary: list
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def process_video(recognizer, frames, out_dir, smooth, detect_every=1, faces=True, explain=False, progress=False):
    """A video's frames (VideoFrames) through recognizer.video_photos, with tracks smoothed over smooth seconds ->
    VideoOutputs, written to out_dir as STEM_annotated.mp4, STEM_frames.csv/.json, STEM_tracks.csv and
    STEM_timeline.png."""
    import cv2

    from reports import TIMELINE_TRACKS, plot_timeline  # matplotlib, for videos only

    stem = frames.path.stem
    video_path = Path(out_dir) / f"{stem}_annotated.mp4"
    writer = None  # made at the first frame, at that frame's size
    classes = recognizer.classes
    results, tracker = Results(classes), FaceTracker(smooth)
    faceless, warnings, notes, other_sizes = 0, [], [], set()
    with tqdm(total=frames.promised or None, desc="frames", disable=not progress) as bar:
        for index, time_s, photo in recognizer.video_photos(frames, frames.fps, tracker, faces=faces, explain=explain,
                                                            detect_every=detect_every):
            image, found = photo.image, photo.faces
            stamp = {"frame": index, "time_s": round(time_s, 3)}
            if not found:
                faceless += 1
                results.add_failure(frames.path, "no face found", **stamp)
            for i, face in enumerate(found):
                results.add(frames.path, i, face, **stamp)
            if writer is None:
                level = cv2.utils.logging.getLogLevel()
                cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its failure is said below
                try:
                    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), frames.fps, image.size)
                finally:
                    cv2.utils.logging.setLogLevel(level)
                size = image.size
                if not writer.isOpened():  # the codec refuses some sizes (1x1): the frames' rows still come
                    warnings.append(f"{video_path} cannot be written (a {image.width}x{image.height} video); only "
                                    "the rows are")
            if writer.isOpened():
                shown = annotate(image, found, classes)
                if shown.size != size:  # the rows keep the frame's own size; the video shows it at the first's
                    other_sizes.add(shown.size)
                    shown = shown.resize(size)
                writer.write(cv2.cvtColor(np.asarray(shown), cv2.COLOR_RGB2BGR))
            bar.update(1)
    wrote_video = writer.isOpened()
    writer.release()
    if frames.shortfall():
        warnings.append(frames.shortfall())
    if other_sizes:
        sizes = ", ".join(f"{w}x{h}" for w, h in sorted(other_sizes))
        warnings.append(f"{frames.path}: frames change size ({sizes} after {size[0]}x{size[1]}): each is analysed at "
                        f"its own size, and {video_path.name} shows them scaled to {size[0]}x{size[1]}")
    if faceless:
        warnings.append(f"{frames.path}: no face found in {faceless} of {frames.read} frames")
    frames_csv, frames_json = results.write(Path(out_dir), f"{stem}_frames")
    summary = tracker.summary(classes)
    tracks_csv = write_tracks(summary, Path(out_dir) / f"{stem}_tracks.csv")
    timeline = Path(out_dir) / f"{stem}_timeline.png"
    drawn = plot_timeline(results.rows, classes, timeline, title=frames.path.name)
    if len(tracker.tracks) > drawn > 0:
        notes.append(f"{timeline.name} draws the {drawn} tracks seen in most frames of {len(tracker.tracks)} (at most "
                     f"{TIMELINE_TRACKS}); {tracks_csv.name} lists them all")
    detections = sum(1 for r in results.rows if r["status"] == "ok")
    return VideoOutputs(video_path if wrote_video else None, frames_csv, frames_json, tracks_csv,
                        timeline if drawn else None, frames.read, detections, len(tracker.tracks), summary, warnings,
                        notes)


def write_tracks(rows, path):
    """The tracks' summary (tracks.FaceTracker.summary) as a CSV -> its path."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["track"])
        writer.writeheader()
        writer.writerows(rows)
    return path
