"""The web page (app.py) in a real browser, headless Chromium driven by Playwright, and through Gradio's client
API: faces counted, the annotated image shown, a file that is not an image answered with a message."""
import re
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

import app
from checkpoint import load_checkpoint
from photos import FaceSettings
from synthetic import draw_face

FACES = [("Happy", 160, (30, 40)), ("Sad", 120, (300, 60)), ("Surprise", 96, (480, 300)), ("Angry", 200, (200, 250))]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upload")
    rng = np.random.default_rng(0)
    canvas = Image.new("L", (640, 480), 90)
    for label, size, pos in FACES:
        canvas.paste(draw_face(label, rng, size), pos)
    canvas.convert("RGB").save(folder / "group.jpg", quality=95)
    (folder / "notes.jpg").write_text("this is not an image")
    return folder


@pytest.fixture(scope="module")
def server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page = app.build_page()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, css=app.CSS, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    page.close()


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, ("the browser test needs Chromium from the system's packages (.ci/run installs it: "
                  "apt-get install chromium)")
    return path


def test_the_page_shows_every_face_and_the_annotated_photo_in_a_browser(server, photos):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server)
            page.locator("#photos input[type=file]").set_input_files(str(photos / "group.jpg"))
            page.locator("#analyze").click()
            expect(page.locator("#message")).to_contain_text(f"{len(FACES)} face(s) in 1 photo(s)", timeout=60_000)
            # The face table: a header row and one row per face.
            expect(page.locator("#faces [role=grid]")).to_have_attribute("aria-rowcount", str(len(FACES) + 1))
            expect(page.locator("#annotated img").first).to_be_visible()
            expect(page.locator("#bars .face")).to_have_count(len(FACES))
            # A file that is not an image, added to the photo: a message on the page, the photo still analysed.
            page.locator("#photos input[type=file]").set_input_files(str(photos / "notes.jpg"))
            page.locator("#analyze").click()
            expect(page.locator("#message")).to_contain_text("notes.jpg: unreadable", timeout=60_000)
            expect(page.locator("#faces [role=grid]")).to_have_attribute("aria-rowcount", str(len(FACES) + 1))
            assert "Traceback" not in page.content()
        finally:
            browser.close()


def test_the_page_answers_the_gradio_client(server, photos):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    gallery, table, bars, downloads, message = client.predict(
        [handle_file(str(photos / "group.jpg"))], None, str(app.DEFAULT_MODEL), "yunet", True, True, 0.6, 24, 960,
        "-30,30", False, api_name="/analyze")
    rows = table["data"] if isinstance(table, dict) else table
    assert len(rows) == len(FACES) and message.startswith(f"{len(FACES)} face(s)")
    assert {row[2] for row in rows} <= set(load_checkpoint(app.DEFAULT_MODEL)["scoring"]["classes"])
    assert sorted(p.rsplit("/", 1)[-1] for p in downloads) == ["predictions.csv", "predictions.json"]
    with pytest.raises(Exception, match="model file /nope.pth does not exist"):
        client.predict([handle_file(str(photos / "group.jpg"))], None, "/nope.pth", "yunet", True, True, 0.6, 24, 960,
                       "-30,30", False, api_name="/analyze")


def test_the_page_builds_a_detector_once_per_setting(photos, monkeypatch):
    built = []
    build = FaceSettings.detector_for
    monkeypatch.setattr(FaceSettings, "detector_for", lambda settings: built.append(settings) or build(settings))
    app.recognizer_for.cache_clear()

    def click(score_threshold):
        return app.analyze([str(photos / "group.jpg")], None, str(app.DEFAULT_MODEL), "yunet", True, True,
                           score_threshold, 24, 960, "-30,30", False)[1]

    first, again = click(0.6), click(0.6)
    assert len(built) == 1 and first == again and len(first) == len(FACES)
    click(0.7)  # other settings, another detector
    assert len(built) == 2 and built[1].score_threshold == 0.7


def clip_frames(count, step=4):
    """RGB frames of two synthetic faces sliding towards each other on a 480x320 canvas."""
    rng = np.random.default_rng(5)
    left, right = draw_face("Happy", rng, 110).convert("RGB"), draw_face("Surprise", rng, 110).convert("RGB")
    frames = []
    for k in range(count):
        canvas = Image.new("RGB", (480, 320), (100, 100, 100))
        canvas.paste(left, (20 + step * k, 100))
        canvas.paste(right, (340 - step * k, 90))
        frames.append(np.asarray(canvas))
    return frames


def test_the_video_tab_answers_with_tracks_and_a_timeline(server, tmp_path):
    import cv2
    from gradio_client import Client, handle_file

    video = tmp_path / "two.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (480, 320))
    for frame in clip_frames(20):
        writer.write(frame[:, :, ::-1].copy())
    writer.release()
    client = Client(server, verbose=False)
    annotated, tracks, timeline, files, message = client.predict(
        handle_file(str(video)), str(app.DEFAULT_MODEL), 0.5, 1, api_name="/analyze_video")
    rows = tracks["data"] if isinstance(tracks, dict) else tracks
    assert message.startswith("20 frames") and "in 2 track(s)" in message
    assert len(rows) == 2 and timeline and sorted(p.rsplit("/", 1)[-1] for p in files) == ["two_frames.csv",
                                                                                           "two_tracks.csv"]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(Exception, match="broken.mp4 cannot be opened as a video"):
        client.predict(handle_file(str(broken)), str(app.DEFAULT_MODEL), 0.5, 1, api_name="/analyze_video")


def test_the_live_view_keeps_each_faces_track_from_frame_to_frame():
    state = None
    for frame in clip_frames(6):
        shown, bars, message, state = app.live_frame(frame, str(app.DEFAULT_MODEL), state)
        found = len(app.default_recognizer(app.DEFAULT_MODEL).analyze(frame))
        assert shown.size == (480, 320) and message == f"{found} face(s) in view."
        assert bars.count('class="face"') == found
    # Two faces, two tracks, whatever frames a face was missed in.
    assert len(state["tracker"].tracks) == 2 and [t.frames >= 4 for t in state["tracker"].tracks] == [True, True]


def test_the_live_camera_labels_the_faces_of_a_fake_camera_in_a_browser(server, tmp_path):
    import cv2
    from playwright.sync_api import expect, sync_playwright

    # Chromium's fake camera plays a Y4M file (YUV 4:2:0) in a loop: two synthetic faces sliding.
    camera = tmp_path / "camera.y4m"
    with open(camera, "wb") as f:
        f.write(b"YUV4MPEG2 W480 H320 F10:1 Ip A1:1 C420jpeg\n")
        for frame in clip_frames(30, step=2):
            f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS + [
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}"])
        try:
            page = browser.new_context(permissions=["camera"]).new_page()
            page.goto(server)
            page.get_by_role("tab", name="Live camera").click()
            page.get_by_role("button", name="Click to Access Webcam").click()
            page.locator("#camera button", has_text="Record").click()
            expect(page.locator("#live-message")).to_contain_text(re.compile(r"[1-9] face\(s\) in view"),
                                                                  timeout=60_000)
            expect(page.locator("#live-view img").first).to_be_visible()
            expect(page.locator("#live-bars .face").first).to_contain_text("track")
            assert "Traceback" not in page.content()
        finally:
            browser.close()


def test_the_model_menu_names_shipped_models_by_what_they_are(tmp_path):
    own = str(tmp_path / "mine.pth")
    choices = app.model_choices(own)
    shown = dict(choices)
    assert shown["FER+, eight classes (shipped, the default)"] == str(app.DEFAULT_MODEL)
    assert shown[own] == own  # another file, by its path as given
    assert choices[0][0].startswith("FER") and not any(str(app.MODELS_DIR) in label for label, _ in choices)
