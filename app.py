"""A local web page for expressions in photos: drop photos (or take a webcam snapshot), see every face.

    python app.py                          # http://127.0.0.1:7860, the shipped model
    python app.py --host 0.0.0.0 --port 8080 --ckpt checkpoints/best.pth

The page runs the path predict.py runs (recognizer.Recognizer): the annotated image (boxes, landmarks, labels),
one row per face with every class's probability as a bar, Grad-CAM on request, and the same predictions.csv
and .json to download. It also answers Gradio's client API (api_name "/analyze"; see README).
"""
import argparse
import html
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from PIL import Image

from cli import HelpFormatter, angle_list, attach_negative_values, positive_int
from errors import UserError, exit_code
from faces import annotate
from images import IMAGE_SUFFIXES
from photos import DEFAULT_MODEL, MODELS_DIR, PhotoResult, Results, output_names
from recognizer import DEFAULT_DETECT_EVERY, DEFAULT_SMOOTH, Recognizer, photo_classifier
from tracks import FaceTracker
from videos import VideoFrames, process_video

MAX_PIXELS = 40_000_000  # larger photos are refused with a message (a 40-megapixel photo is 7,700 x 5,200)
BAR_COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


def get_args_parser():
    p = argparse.ArgumentParser(description="A local web page that finds the faces in photos and classifies "
                                "their expressions.", formatter_class=HelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=positive_int, default=7860, help="the port the page is served on")
    p.add_argument("--ckpt", default=str(DEFAULT_MODEL), help="the model the page starts with")
    return p


# What the shipped models are, as the page's menu names them (models/README.md has their cards).
SHIPPED_NAMES = {"ferplus_vgg.pth": "FER+, eight classes (shipped, the default)",
                 "fer2013_7class_vgg.pth": "FER2013, seven classes (shipped)",
                 "fer2013_5class_vgg.pth": "FER2013, the assignment's five classes (shipped)"}


def shipped_models():
    return sorted(str(p) for p in MODELS_DIR.glob("*.pth"))


@lru_cache(maxsize=4)
def classifier_for(path):
    """Models are loaded once per path (a page session asks for the same one again and again)."""
    return photo_classifier(path)


@lru_cache(maxsize=4)
def recognizer_for(model, detector, align, score_threshold, min_face, max_side, turns):
    """A Recognizer per model and face settings, built once, as models are loaded once per path: building YuNet's
    session takes 8 ms on this project's CPU, a quarter of the search of a 1280x720 photo."""
    return Recognizer(classifier_for(model), detector=detector, turns=turns, align=align,
                      score_threshold=score_threshold, min_face=min_face, max_side=max_side)


def analyze(files, snapshot, model, detector, find_faces, align, score_threshold, min_face, max_side, turns,
            explain):
    """The page's one action: every uploaded photo (and the webcam snapshot) through a Recognizer.

    -> (annotated images [(path, caption)], face table rows, probability bars as HTML, [CSV, JSON] to download,
    a message saying what happened). A bad model path, unparsable settings or no input raise gradio.Error, a
    message the page shows; a photo that is not an image, too large or without a face is named in the message
    while the others go on."""
    import gradio as gr

    paths = [Path(f) for f in (files or [])] + ([Path(snapshot)] if snapshot else [])
    if not paths:
        raise gr.Error("Add a photo (or take a webcam snapshot) first.")
    try:
        recognizer = recognizer_for(str(model).strip(), detector, bool(align), float(score_threshold),
                                    positive_int(str(int(min_face or 0))), positive_int(str(int(max_side or 0))),
                                    angle_list(turns or "none"))
    except argparse.ArgumentTypeError as e:
        raise gr.Error(f"The smallest face, the detection size and the turns: {e}") from None
    except (UserError, ValueError) as e:
        raise gr.Error(str(e)) from None
    out_dir = Path(tempfile.mkdtemp(prefix="fer_app_"))
    classes = recognizer.classes
    results, gallery, notes = Results(classes), [], []
    refused = {path: too_large(path) for path in paths}
    taken = [path for path in paths if refused[path] is None]
    analyzed = dict(zip(taken, recognizer.photos(taken, faces=find_faces, explain=explain)))
    for path, name in zip(paths, output_names(paths)):
        shown = original_name(path)
        photo = refused[path] or analyzed[path]
        if photo.status != "ok":
            status = photo.status.replace(str(path), shown)  # the user's file name, not the upload's temporary path
            notes.append(f"{shown}: {status}")
            results.add_failure(shown, status)
            continue
        for i, face in enumerate(photo.faces):
            results.add(shown, i, face)
        annotated = out_dir / f"{name}_annotated.jpg"
        annotate(photo.image, photo.faces, classes).save(annotated, quality=92)
        gallery.append((str(annotated), f"{shown}: {len(photo.faces)} face(s)"))
    csv_path, _ = results.write(out_dir)
    faces = [r for r in results.rows if r["status"] == "ok"]
    table = [[r["file"], r["face"], r["label"], f"{r['confidence']:.2f}", f"{r['x']},{r['y']},{r['w']},{r['h']}"]
             for r in faces]
    message = f"{len(faces)} face(s) in {len(paths)} photo(s)."
    if notes:
        message += " Not analysed: " + "; ".join(notes) + "."
        gr.Warning(message)
    return gallery, table, probability_bars(faces, classes), [str(csv_path), str(csv_path.with_suffix(
        ".json"))], message


def model_choices(ckpt):
    """The model menu: (what the user reads, the path the page loads) for each shipped model, by what it is, and
    for any other file, by its path as given."""
    paths = sorted({*shipped_models(), str(ckpt)})
    return sorted(((shipped_name(p) or p, p) for p in paths), key=lambda choice: (shipped_name(choice[1]) is None,
                                                                                 choice[0]))


def shipped_name(path):
    """A shipped model's name (SHIPPED_NAMES), or None for any other file."""
    path = Path(path)
    return SHIPPED_NAMES.get(path.name) if path.resolve().parent == MODELS_DIR else None


def default_recognizer(model):
    """The Recognizer of the video and live tabs: model (a path) with predict.py's default face settings."""
    return recognizer_for(str(model).strip(), "yunet", True, 0.6, 24, 960, (-30.0, 30.0))


def analyze_clip(video, model, smooth, every):
    """The page's video tab: an uploaded clip through videos.process_video with the default face settings ->
    (annotated video, tracks table rows, timeline PNG, [frames CSV, tracks CSV], message). gradio.Error for no
    video, a bad model or a file that is not a video."""
    import gradio as gr

    if not video:
        raise gr.Error("Add a video first.")
    try:
        recognizer = default_recognizer(model)
        frames = VideoFrames(video, "the video")  # a file that is no video, or yields no frame, makes no folder
        out_dir = Path(tempfile.mkdtemp(prefix="fer_video_"))
        outputs = process_video(recognizer, frames, out_dir, float(smooth), int(every))
    except UserError as e:
        raise gr.Error(str(e).replace(str(video), Path(video).name)) from None
    rows = [[r["track"], r["first_s"], r["last_s"], r["frames"], r["dominant"]] for r in outputs.summary]
    # The user's file name, not the upload's or the outputs' temporary folder.
    shown = [w.replace(str(video), Path(video).name).replace(f"{out_dir}/", "") for w in outputs.warnings]
    message = (f"{outputs.frames} frames, {outputs.detections} face detections in {outputs.tracks} track(s)."
               + "".join(f" {w}." for w in shown))
    table = {"headers": ["track", "first (s)", "last (s)", "frames", "dominant"], "data": rows}
    return (str(outputs.annotated) if outputs.annotated else None, table,
            str(outputs.timeline) if outputs.timeline else None, [str(outputs.frames_csv), str(outputs.tracks_csv)],
            message)


def live_frame(frame, model, state):
    """The live camera: one streamed frame (RGB array) -> (the frame with boxes, track ids and labels; the current
    bars of each face; a line saying how many; the session's tracker and clock). Faces keep their track from frame
    to frame, their probabilities smoothed over DEFAULT_SMOOTH seconds."""
    if frame is None:
        return None, "", "", state
    try:
        recognizer = default_recognizer(model)
    except UserError as e:
        return None, "", str(e), state
    state = state or {"tracker": FaceTracker(DEFAULT_SMOOTH), "start": time.monotonic()}
    photo = recognizer.photos([frame])[0]
    recognizer.track(photo, state["tracker"], time.monotonic() - state["start"])
    results = Results(recognizer.classes)
    for i, face in enumerate(photo.faces):
        results.add(f"track {face.track}", i, face)
    shown = annotate(photo.image, photo.faces, recognizer.classes) if photo.image is not None else None
    return shown, probability_bars(results.rows, recognizer.classes), f"{len(photo.faces)} face(s) in view.", state


def original_name(path):
    """The name a user gave the file (Gradio keeps uploads under their own names in a temporary folder)."""
    return Path(path).name


def too_large(path):
    """A PhotoResult saying the photo is too large to take, or None."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                return PhotoResult(str(path), status=f"too large: {im.width}x{im.height} pixels, more than "
                                   f"{MAX_PIXELS / 1e6:.0f} megapixels")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None  # the Recognizer says what is wrong with it
    return None


def probability_bars(rows, classes):
    """Every face's class probabilities as horizontal bars (HTML)."""
    if not rows:
        return "<p>No faces.</p>"
    parts = ['<div class="faces">']
    for r in rows:
        parts.append(f'<div class="face"><b>{html.escape(str(r["file"]))}, face {r["face"]}: '
                     f'{html.escape(r["label"])}</b>')
        for k, c in enumerate(classes):
            p = float(r[f"p_{c}"])
            parts.append(f'<div class="bar"><span class="name">{html.escape(c)}</span><span class="track">'
                         f'<span style="width:{100 * p:.1f}%;background:{BAR_COLOURS[k % len(BAR_COLOURS)]}">'
                         f'</span></span><span class="value">{100 * p:.1f}%</span></div>')
        parts.append("</div>")
    return "".join(parts) + "</div>"


CSS = """
.faces {display: flex; flex-wrap: wrap; gap: 16px}
.face {min-width: 260px}
.bar {display: flex; align-items: center; gap: 6px; font-size: 13px}
.bar .name {width: 80px}
.bar .track {flex: 1; background: #eee; height: 12px; position: relative}
.bar .track span {display: block; height: 12px}
.bar .value {width: 50px; text-align: right}
"""


def build_page(ckpt=str(DEFAULT_MODEL)):
    """The Gradio Blocks page (not launched)."""
    import gradio as gr

    with gr.Blocks(title="Facial expressions") as page:
        gr.Markdown("# Facial expressions\nPhotos, a video or the live camera; every face found is classified by "
                    "the model below (the same path as `predict.py`).")
        model = gr.Dropdown(choices=model_choices(ckpt), value=ckpt, allow_custom_value=True, elem_id="model",
                            label="Model (a shipped one, or any checkpoint or export path)")
        with gr.Tab("Photos"):
            with gr.Row():
                with gr.Column():
                    files = gr.File(file_count="multiple", file_types=sorted(IMAGE_SUFFIXES), label="Photos",
                                    elem_id="photos")
                    snapshot = gr.Image(sources=["webcam"], type="filepath", label="Webcam snapshot")
                    with gr.Accordion("Faces", open=False):
                        detector = gr.Radio(["yunet", "haar"], value="yunet", label="Detector")
                        find_faces = gr.Checkbox(True, label="Find faces (off: each photo is one face crop)")
                        align = gr.Checkbox(True, label="Align faces by their landmarks (YuNet)")
                        score = gr.Slider(0.1, 0.95, value=0.6, step=0.05, label="Detector score threshold")
                        min_face = gr.Number(24, precision=0, label="Smallest face (pixels)")
                        max_side = gr.Number(960, precision=0, label="Detect at a longer side of at most (pixels)")
                        turns = gr.Textbox("-30,30", label="Also search turned copies (degrees, or none)")
                    explain = gr.Checkbox(False, label="Grad-CAM: where the evidence for each label lies")
                    run = gr.Button("Analyze", variant="primary", elem_id="analyze")
                with gr.Column():
                    message = gr.Markdown(elem_id="message")
                    gallery = gr.Gallery(label="Annotated", elem_id="annotated", columns=1, height=460,
                                         object_fit="contain")
                    table = gr.Dataframe(headers=["file", "face", "label", "confidence", "box"], label="Faces",
                                         elem_id="faces", interactive=False)
                    bars = gr.HTML(elem_id="bars")
                    downloads = gr.File(label="predictions.csv and .json", file_count="multiple")
            run.click(analyze, [files, snapshot, model, detector, find_faces, align, score, min_face, max_side, turns,
                                explain], [gallery, table, bars, downloads, message], api_name="analyze")
        with gr.Tab("Video"):
            with gr.Row():
                with gr.Column():
                    clip = gr.Video(label="A video", sources=["upload"], elem_id="clip")
                    smooth = gr.Slider(0, 3, value=DEFAULT_SMOOTH, step=0.1, label="Smooth each face over (seconds)")
                    every = gr.Slider(1, 10, value=DEFAULT_DETECT_EVERY, step=1,
                                      label="Search the whole frame every N-th frame")
                    run_video = gr.Button("Analyze the video", variant="primary", elem_id="analyze-video")
                with gr.Column():
                    video_message = gr.Markdown(elem_id="video-message")
                    annotated_video = gr.Video(label="Annotated", elem_id="annotated-video")
                    tracks_table = gr.Dataframe(label="Tracks", elem_id="tracks", interactive=False)
                    timeline = gr.Image(label="Each track over time", elem_id="timeline", type="filepath")
                    video_files = gr.File(label="frames and tracks CSV", file_count="multiple")
            run_video.click(analyze_clip, [clip, model, smooth, every],
                            [annotated_video, tracks_table, timeline, video_files, video_message],
                            api_name="analyze_video")
        with gr.Tab("Live camera"):
            live_state = gr.State(None)
            with gr.Row():
                camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Camera",
                                  elem_id="camera")
                with gr.Column():
                    live_view = gr.Image(label="Faces, tracks and labels", elem_id="live-view")
                    live_message = gr.Markdown(elem_id="live-message")
                    live_bars = gr.HTML(elem_id="live-bars")
            camera.stream(live_frame, [camera, model, live_state], [live_view, live_bars, live_message, live_state],
                          stream_every=0.25, concurrency_limit=1)
    return page


def main(argv=None):
    """The command line: -> exit code (2, with a one-line message, for bad input)."""
    return exit_code("app.py", run, get_args_parser().parse_args(attach_negative_values(argv, ("--turns",))))


def run(args):
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the page needs Gradio: pip install -r requirements-app.txt") from None
    if not Path(args.ckpt).is_file():
        raise UserError(f"model file {args.ckpt} does not exist")
    classifier_for(args.ckpt)  # a broken model is a one-line error now, not on the page
    build_page(args.ckpt).launch(server_name=args.host, server_port=args.port, css=CSS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
