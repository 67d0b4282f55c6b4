"""Faces followed through a video: track ids, smoothing, the tracks summary, the video API and damaged files."""
import csv
import re

import cv2
import numpy as np
import pytest
from conftest import load_script
from PIL import Image

from errors import UserError
from faces import Face
from recognizer import Recognizer
from synthetic import draw_face
from tracks import FaceTracker


def face(x, y, p):
    return Face((x, y, 50, 50), probabilities=np.array(p, np.float32))


def test_faces_keep_their_track_through_moves_and_short_misses():
    tracker = FaceTracker(smooth=0, max_missed=0.5)
    a, b = [0.9, 0.1], [0.2, 0.8]
    assert tracker.update([face(0, 0, a), face(200, 0, b)], 0.0) == [0, 1]
    assert tracker.update([face(210, 5, b), face(10, 5, a)], 0.1) == [1, 0]  # listed the other way round
    assert tracker.update([face(20, 10, a)], 0.2) == [0]  # face 1 missed
    assert tracker.update([face(30, 10, a), face(215, 5, b)], 0.6) == [0, 1]  # back within 0.5 s of its last sight
    assert tracker.update([face(40, 10, a), face(220, 5, b)], 2.0) == [2, 3]  # gone too long: new tracks
    summary = tracker.summary(["happy", "sad"])
    assert [(r["track"], r["frames"], r["dominant"]) for r in summary] == [(0, 4, "happy"), (1, 3, "sad"),
                                                                            (2, 1, "happy"), (3, 1, "sad")]
    assert summary[0]["first_s"] == 0.0 and summary[0]["last_s"] == 0.6 and summary[0]["share_happy"] == 1.0


def test_smoothing_stops_a_steady_face_flickering_between_labels():
    # A face whose frames alternate between 0.55/0.45 and 0.45/0.55 around a steady 0.7 happy: raw labels flip,
    # smoothed over half a second they hold.
    frames = [[0.7, 0.3], [0.45, 0.55]] * 10
    raw, smooth = FaceTracker(smooth=0), FaceTracker(smooth=0.5)
    raw_labels, smooth_labels = [], []
    for k, p in enumerate(frames):
        f, g = face(0, 0, p), face(0, 0, p)
        raw.update([f], k / 25)
        smooth.update([g], k / 25)
        raw_labels.append(int(f.probabilities.argmax()))
        smooth_labels.append(int(g.probabilities.argmax()))
    assert raw_labels.count(1) == 10 and smooth_labels.count(1) == 0
    assert smooth.summary(["happy", "sad"])[0]["share_happy"] == 1.0
    with pytest.raises(UserError, match="smoothing must be 0 or more seconds"):
        FaceTracker(smooth=-1)


def moving_faces(count=12, size=(480, 320), step=6):
    """Frames (BGR arrays) of two synthetic faces sliding towards each other, step pixels a frame."""
    rng = np.random.default_rng(5)
    left, right = draw_face("Happy", rng, 110).convert("RGB"), draw_face("Surprise", rng, 110).convert("RGB")
    frames = []
    for k in range(count):
        canvas = Image.new("RGB", size, (100, 100, 100))
        canvas.paste(left, (20 + step * k, 100))
        canvas.paste(right, (340 - step * k, 90))
        frames.append(np.asarray(canvas)[:, :, ::-1].copy())
    return frames


def test_the_video_api_gives_each_face_its_track_and_a_summary():
    recognizer = Recognizer()
    analysis = recognizer.analyze_video(moving_faces(), fps=10)
    frames = list(analysis)
    assert [f["frame"] for f in frames] == list(range(12)) and frames[3]["time_s"] == 0.3
    tracks_by_side = {}
    for f in frames:
        assert len(f["faces"]) == 2
        for d in f["faces"]:
            tracks_by_side.setdefault(d["box"][0] < 200, set()).add(d["track"])
    assert tracks_by_side == {True: {0}, False: {1}} or tracks_by_side == {True: {1}, False: {0}}
    summary = analysis.tracks()
    assert [r["frames"] for r in summary] == [12, 12] and summary[0]["last_s"] == 1.1
    with pytest.raises(UserError, match="read once"):
        list(analysis)
    with pytest.raises(UserError, match="iterate over the analysis first"):
        recognizer.analyze_video(moving_faces(2), fps=10).tracks()
    with pytest.raises(UserError, match="fps must be a number above 0"):
        recognizer.analyze_video(moving_faces(2), fps=0)


def test_predict_video_writes_tracks_and_says_when_a_file_stops_early(tmp_path, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (480, 320))
    for frame in moving_faces(30, step=3):
        writer.write(frame)
    writer.release()
    predict = load_script("predict")
    assert predict.main(["--video", str(video), "--out-dir", str(tmp_path / "o"), "--no-progress"]) == 0
    with open(tmp_path / "o" / "clip_tracks.csv", newline="") as f:
        tracks = list(csv.DictReader(f))
    with open(tmp_path / "o" / "clip_frames.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    # Two faces, two tracks, however many frames the detector missed one in (JPEG-compressed frames).
    assert len(tracks) == 2 and {r["track"] for r in rows} == {"0", "1"} and len(rows) >= 50
    assert [int(t["frames"]) for t in tracks] == [sum(r["track"] == t["track"] for r in rows) for t in tracks]
    timeline = Image.open(tmp_path / "o" / "clip_timeline.png")
    assert timeline.height > timeline.width / 4  # two panels, one per track
    # The same file cut in half: the frames read are kept, and where reading stopped is said.
    cut = tmp_path / "cut.avi"
    cut.write_bytes(video.read_bytes()[:video.stat().st_size // 2])
    capsys.readouterr()
    assert predict.main(["--video", str(cut), "--out-dir", str(tmp_path / "c"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "reading stopped at frame" in err and "of the 30 its header promises" in err
    # The API says it too, once its frames are read (it had ended early in silence).
    with pytest.warns(UserWarning, match=f"{re.escape(str(cut))}: reading stopped at frame .* of the 30 its header"):
        read = list(Recognizer(threads=1).analyze_video(cut))
    assert 0 < len(read) < 30


def test_detecting_every_third_frame_follows_the_faces_in_between(monkeypatch):
    recognizer = Recognizer()
    searched = []
    detector = recognizer.detector
    monkeypatch.setattr(recognizer, "detector", lambda image: searched.append(1) or detector(image))
    recognizer.detector.follow = detector.follow
    every = list(Recognizer().analyze_video(moving_faces(), fps=10, detect_every=1))
    followed = list(recognizer.analyze_video(moving_faces(), fps=10, detect_every=3))
    assert len(searched) == 4  # frames 0, 3, 6 and 9; the others followed from where the faces were
    for a, b in zip(every, followed):
        assert sorted(f["track"] for f in b["faces"]) == [0, 1]
        for fa, fb in zip(sorted(a["faces"], key=lambda f: f["box"][0]), sorted(b["faces"], key=lambda f: f["box"][0])):
            # The same face, boxed within 12 pixels and scored alike (the drawn faces sit near a tie between two
            # classes, so their labels may differ where the probabilities hardly do).
            assert max(abs(u - v) for u, v in zip(fa["box"], fb["box"])) <= 12
            assert max(abs(fa["probabilities"][k] - fb["probabilities"][k]) for k in fa["probabilities"]) < 0.1
    for bad in (0, 1.5, "3", None):
        with pytest.raises(UserError, match="detect_every must be a whole number of 1 or more"):
            recognizer.analyze_video(moving_faces(2), fps=10, detect_every=bad)
    for bad in ("25", 0, float("inf")):
        with pytest.raises(UserError, match="fps must be a number above 0"):
            recognizer.analyze_video(moving_faces(2), fps=bad)
    with pytest.raises(UserError, match="smooth must be"):
        recognizer.analyze_video(moving_faces(2), fps=10, smooth="x")
    with pytest.raises(UserError, match="for one image, use analyze"):
        recognizer.analyze_video(moving_faces(1)[0], fps=10)  # one frame is not a video of its rows
    frames = moving_faces(3)
    frames[1] = "no/such/frame.png"
    with pytest.warns(UserWarning, match="frame 1: .*gives no faces"):
        seen = list(recognizer.analyze_video(frames, fps=10))
    assert [len(f["faces"]) for f in seen] == [2, 0, 2]


def test_frames_that_change_size_are_each_read_at_their_own_size(tmp_path, capsys):
    # An MJPEG stream of 640x480, then 1280x720, then 320x240 frames: OpenCV's reader squeezed every frame to
    # 640x480 and gave boxes in those coordinates. The face, at the same place of each frame, must be found at its
    # own frame's pixels (x near 0.6 of the width) and stay one track.
    face_image = draw_face("Happy", np.random.default_rng(2), 200).convert("RGB")
    stream = tmp_path / "sizes.mjpeg"
    with open(stream, "wb") as f:
        for w, h in [(640, 480)] * 3 + [(1280, 720)] * 3 + [(320, 240)] * 3:
            canvas = Image.new("RGB", (w, h), (100, 100, 100))
            side = w // 4
            canvas.paste(face_image.resize((side, side)), (int(0.6 * w), int(0.3 * h)))
            f.write(cv2.imencode(".jpg", np.asarray(canvas)[:, :, ::-1])[1].tobytes())
    predict = load_script("predict")
    assert predict.main(["--video", str(stream), "--out-dir", str(tmp_path / "o"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "frames change size (320x240, 1280x720 after 640x480): each is analysed at its own size" in err
    with open(tmp_path / "o" / "sizes_frames.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    widths = [640] * 3 + [1280] * 3 + [320] * 3
    assert len(rows) >= 7 and {r["track"] for r in rows} == {"0"}
    for r in rows:
        w = widths[int(r["frame"])]
        assert 0.55 * w <= int(r["x"]) + int(r["w"]) / 2 - w / 8 <= 0.65 * w  # the box's centre, less half a face


def rotated_video(path, frames, quarter_turns_clockwise):
    """An MP4 of frames (BGR arrays) whose track header says to show it turned clockwise by quarter turns, as a
    phone held upright records its landscape sensor: the 'rotate' tag is no longer written by FFmpeg's muxer, so
    the matrix of the file's tkhd box (ISO/IEC 14496-12, 8.3.2) is set by hand."""
    import struct

    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.height, stream.width = frames[0].shape[:2]
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(stream.encode())
    data = bytearray(path.read_bytes())
    box = data.find(b"tkhd")
    times = 8 + 4 + 4 + 8 if data[box + 4] == 1 else 4 + 4 + 4 + 4 + 4  # version 1 has 64-bit times
    at = box + 4 + 4 + times + 8 + 8  # after version/flags, the times, reserved, layer, group, volume, reserved
    cos, sin = [(1, 0), (0, 1), (-1, 0), (0, -1)][quarter_turns_clockwise % 4]
    data[at:at + 36] = struct.pack(">9i", cos << 16, sin << 16, 0, -sin << 16, cos << 16, 0, 0, 0, 1 << 30)
    path.write_bytes(data)


def test_a_face_that_cannot_be_followed_makes_the_frame_a_whole_search(monkeypatch):
    from faces import YuNetDetector

    searched = []
    search = YuNetDetector.__call__
    monkeypatch.setattr(YuNetDetector, "__call__", lambda self, image: searched.append(1) or search(self, image))
    frames = moving_faces(6)
    frames[1:] = [np.roll(f, 100, axis=0) for f in frames[1:]]  # from frame 1 on, 100 pixels lower (a cut)
    frames[4][:, 300:] = 100  # and in frame 4 the right one has left, between searches (frames 0 and 3)
    seen = list(Recognizer().analyze_video(frames, fps=10, detect_every=3))
    # Frames 0 and 3 by schedule, 1 and 4 because a face was not where it had been; 2 and 5 followed.
    assert len(searched) == 4
    assert [len(f["faces"]) for f in seen] == [2, 2, 2, 2, 1, 1]
    assert all(face["box"][1] > 180 for face in seen[1]["faces"])  # found where they went


def test_an_mp4_cut_off_before_its_index_says_so_in_one_line(tmp_path, capsys):
    # OpenCV writes an MP4's index at the end: half the file cannot be opened, and FFmpeg says only "Invalid data".
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (480, 320))
    for frame in moving_faces(10):
        writer.write(frame)
    writer.release()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[:video.stat().st_size // 2])
    assert load_script("predict").main(["--video", str(cut), "--out-dir", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--video {cut} cannot be opened as a video (" in err
    assert "cut off while recording or copying lacks the index at its end" in err


def test_a_photo_given_as_a_video_is_named_and_an_animated_gif_is_a_video(tmp_path, capsys):
    from videos import VideoFrames
    photo = tmp_path / "photo.jpg"
    Image.fromarray(moving_faces(1)[0][:, :, ::-1]).save(photo)
    assert load_script("predict").main(["--video", str(photo), "--out-dir", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.endswith(f"error: --video {photo} is a still image, not a video: score it as a photo")
    assert not (tmp_path / "o").exists()  # refused before the output folder is made
    gif = tmp_path / "clip.gif"
    frames = [Image.fromarray(f[:, :, ::-1]) for f in moving_faces(3)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    assert len(list(VideoFrames(gif))) == 3
    frames[0].save(gif)  # a GIF of one frame is a still image too
    with pytest.raises(UserError, match="is a still image, not a video"):
        VideoFrames(gif)


def test_a_phone_video_with_rotation_metadata_is_turned_upright(tmp_path):
    from videos import VideoFrames

    upright = moving_faces(count=4)
    stored = [np.ascontiguousarray(np.rot90(f, 1)) for f in upright]  # sideways, as the sensor recorded it
    clip = tmp_path / "phone.mp4"
    rotated_video(clip, stored, 1)
    frames = list(VideoFrames(clip))
    assert [f.shape for f in frames] == [f.shape for f in upright]  # 320 x 480, not 480 x 320
    # Lossy coding blurs the pixels; the picture is the upright one, not the stored or a mirrored one.
    error = {turns: np.abs(frames[0].astype(int) - np.rot90(upright[0], turns)).mean() for turns in (0, 2)}
    assert 2.5 * error[0] < error[2], error  # measured 3.6 against 10.9
    # Found as the upright photos' faces are: two a frame, at their places (boxes of the 480 x 320 frame).
    frames = list(Recognizer(threads=1).analyze_video(clip))
    assert [len(f["faces"]) for f in frames] == [2] * 4
    assert all(max(face["box"][0] + face["box"][2] for face in f["faces"]) <= 480 for f in frames)
