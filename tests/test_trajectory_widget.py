"""The trajectory widget (web/js/trajectory_widget.js) in a real headless Chromium, driven by Playwright.

tests/browser/ holds a test page and the smallest stand-in for the ComfyUI front end the widget touches; a local
HTTP server on 127.0.0.1 serves it with the widget at the URL ComfyUI gives it. The tests draw with real pointer
events and check the JSON the widget keeps in the node's hidden ``trajectory`` widget against the Python parser,
and the widget's resampling against :func:`easyanimate_core.trajectory.resample_track`.

Chromium comes from Debian (``apt-get install chromium``), Playwright from PyPI; ``.ci/run`` installs both. A
missing browser is a failure, never a skip.
"""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import threading
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest

from easyanimate_core.trajectory import parse_trajectory, render_trajectory_video, resample_track

ROOT = Path(__file__).resolve().parent.parent
PAGE_DIR = ROOT / "tests" / "browser"
WIDGET_DIR = ROOT / "web" / "js"
PACK_URL = "/extensions/ComfyUI-EasyAnimate/js/"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
COLOR_TRACK_1 = (0xFF, 0x5A, 0x5A)  # COLORS[0] in the widget


def _reference_png() -> bytes:
    """A 336 x 192 reference image: a horizontal gradient with a white square, as the server's /view returns."""
    image = np.zeros((192, 336, 3), dtype=np.uint8)
    image[..., 0] = np.linspace(40, 200, 336, dtype=np.uint8)[None, :]
    image[..., 1] = 90
    image[60:130, 140:210] = 255
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the test page, the stand-in /scripts, the widget under ComfyUI's extension URL, and /api/view."""

    reference = b""
    extensions_map: ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                                                 ".js": "text/javascript"}

    def translate_path(self, path):
        route = urlparse(path).path
        if route.startswith(PACK_URL):
            return str(WIDGET_DIR / route[len(PACK_URL):])
        return str(PAGE_DIR / route.lstrip("/"))

    def do_GET(self):
        if urlparse(self.path).path == "/api/view":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(self.reference)))
            self.end_headers()
            self.wfile.write(self.reference)
            return
        super().do_GET()

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    _Handler.reference = _reference_png()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("The browser tests need Playwright for Python: pip install playwright (.ci/run installs it).")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"The browser tests need Debian's Chromium at {CHROMIUM}: run `apt-get install chromium` "
                    "(as root; .ci/run does it).")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1300, "height": 950}, device_scale_factor=1)
    # Nothing but the local server: the widget must not need the network.
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server)
                  else route.abort())
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{server}/index.html")
    page.wait_for_function("document.body.dataset.ready === '1' || document.body.dataset.error")
    assert not page.evaluate("document.body.dataset.error"), page.evaluate("document.body.dataset.error")
    yield page
    context.close()
    assert not errors, errors


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _new_node(page, **options) -> int:
    index = page.evaluate("(o) => T.createNode(o)", options)
    page.wait_for_function("(i) => T.editor(i).canvas.width > 0", arg=index)
    return index


def _at(page, node, x, y):
    return page.evaluate("([i, x, y]) => T.toPage(i, x, y)", [node, x, y])


def _click(page, node, x, y, **kwargs):
    page.mouse.click(*_at(page, node, x, y), **kwargs)


def _drag(page, node, start, end, steps=8):
    page.mouse.move(*_at(page, node, *start))
    page.mouse.down()
    page.mouse.move(*_at(page, node, *end), steps=steps)
    page.mouse.up()


def _press(page, node, label):
    page.mouse.click(*page.evaluate("([i, label]) => T.button(i, label)", [node, label]))


def _state(page, node) -> dict:
    return page.evaluate("(i) => T.state(i)", node)


def _doc(page, node) -> dict:
    return json.loads(_state(page, node)["text"])


def _assert_points(actual, expected, frame_size):
    # A click lands on a whole pixel: allow one pixel of the frame.
    tolerance = 1.01 / min(frame_size)
    assert len(actual) == len(expected), (actual, expected)
    for a, e in zip(actual, expected):
        assert abs(a[0] - e[0]) <= tolerance and abs(a[1] - e[1]) <= tolerance, (actual, expected)


TRACK_1 = [(0.15, 0.75), (0.45, 0.35), (0.80, 0.55)]
TRACK_2_START, TRACK_2_END = (0.2, 0.2), (0.75, 0.85)


def _draw_two_tracks(page, node):
    for x, y in TRACK_1:
        _click(page, node, x, y)
    _press(page, node, "+ Track")
    _click(page, node, *TRACK_2_START)
    # Press, drag and release: the new point follows the pointer until it is placed.
    page.mouse.move(*_at(page, node, 0.5, 0.5))
    page.mouse.down()
    page.mouse.move(*_at(page, node, *TRACK_2_END), steps=6)
    page.mouse.up()


# ---------------------------------------------------------------------------------------------------------------
# Drawing -> JSON -> the Python parser


def test_two_tracks_drawn_with_the_mouse_are_the_json_the_python_side_parses(page):
    node = _new_node(page)
    assert page.evaluate("T.node(0).createdBy") == "node type", "the node type's own onNodeCreated must still run"
    _draw_two_tracks(page, node)
    state = _state(page, node)
    doc = json.loads(state["text"])
    width, height = (round(v) for v in state["frame"])
    assert doc["version"] == 1 and doc["frames"] == 49
    assert doc["canvas"] == {"width": width, "height": height}
    assert abs(width / height - 672 / 384) < 0.01, "the frame has the output's aspect"
    assert len(doc["tracks"]) == 2
    _assert_points(doc["tracks"][0]["points"], TRACK_1, (width, height))
    _assert_points(doc["tracks"][1]["points"], [TRACK_2_START, TRACK_2_END], (width, height))
    assert state["chips"] == ["1", "2"] and state["active"] == 1

    parsed = parse_trajectory(state["text"])
    assert not parsed.per_frame and parsed.canvas_size == (width, height) and parsed.frames == 49
    _assert_points(parsed.tracks[0], TRACK_1, (width, height))
    _assert_points(parsed.tracks[1], [TRACK_2_START, TRACK_2_END], (width, height))

    # The control video's blobs start and end where the tracks were drawn.
    video = render_trajectory_video(parsed, 9, 96, 64)[..., 0].numpy()  # [F, H, W]
    for track in (TRACK_1, [TRACK_2_START, TRACK_2_END]):
        for frame, (x, y) in ((0, track[0]), (8, track[-1])):
            peak = video[frame, round(y * 64) - 2: round(y * 64) + 3, round(x * 96) - 2: round(x * 96) + 3]
            assert peak.max() > 0.9, (frame, x, y)


def test_a_drawing_reloads_from_its_json_unchanged(page):
    first = _new_node(page)
    _draw_two_tracks(page, first)
    text = _state(page, first)["text"]

    # A workflow load: the node is created empty, then configure() sets the saved value.
    second = _new_node(page)
    page.evaluate("([i, text]) => T.configure(i, text)", [second, text])
    reloaded = _state(page, second)
    assert reloaded["text"] == text, "loading must not rewrite the saved value"
    assert reloaded["tracks"] == _state(page, first)["tracks"]
    assert reloaded["chips"] == ["1", "2"]
    page.evaluate("([a, b]) => { for (const i of [a, b]) { T.editor(i).selected = null; T.editor(i).hover = null; "
                  "T.editor(i).active = 1; T.editor(i).render(); } }", [first, second])
    assert page.evaluate("T.pixels(0)") == page.evaluate("T.pixels(1)"), "the reloaded drawing looks the same"

    # Created with the value already set (a pasted node) gives the same drawing.
    third = _new_node(page, text=text)
    assert _state(page, third)["tracks"] == reloaded["tracks"]


def test_move_delete_undo_and_clear(page):
    node = _new_node(page)
    for x, y in TRACK_1:
        _click(page, node, x, y)
    frame = _state(page, node)["frame"]
    history = [_doc(page, node)["tracks"]]

    _drag(page, node, TRACK_1[1], (0.5, 0.2))
    moved = _doc(page, node)["tracks"][0]["points"]
    _assert_points(moved, [TRACK_1[0], (0.5, 0.2), TRACK_1[2]], frame)
    history.append(_doc(page, node)["tracks"])

    _click(page, node, *TRACK_1[0], button="right")
    _assert_points(_doc(page, node)["tracks"][0]["points"], [(0.5, 0.2), TRACK_1[2]], frame)
    history.append(_doc(page, node)["tracks"])

    page.keyboard.down("Alt")
    _click(page, node, *TRACK_1[2])
    page.keyboard.up("Alt")
    _assert_points(_doc(page, node)["tracks"][0]["points"], [(0.5, 0.2)], frame)
    history.append(_doc(page, node)["tracks"])

    # Select the last point and delete it with the button: the track is gone.
    _click(page, node, 0.5, 0.2)
    _press(page, node, "Delete point")
    assert _doc(page, node)["tracks"] == []
    assert _state(page, node)["chips"] == []

    for expected in reversed(history):
        _press(page, node, "Undo")
        assert _doc(page, node)["tracks"] == expected

    _press(page, node, "Clear")
    assert _doc(page, node)["tracks"] == []
    _press(page, node, "Undo")
    assert _doc(page, node)["tracks"] == history[0]
    for remaining in (2, 1, 0):  # back through the three clicks that placed the points
        _press(page, node, "Undo")
        assert sum(len(t["points"]) for t in _doc(page, node)["tracks"]) == remaining
    assert _state(page, node)["undoDisabled"]


def test_delete_keys_stay_in_the_widget_and_ctrl_z_goes_to_comfyui(page):
    node = _new_node(page)
    _click(page, node, 0.3, 0.3)
    _click(page, node, 0.6, 0.6)
    page.keyboard.press("Delete")  # the point just placed is selected
    _assert_points(_doc(page, node)["tracks"][0]["points"], [(0.3, 0.3)], _state(page, node)["frame"])
    page.keyboard.press("Backspace")  # nothing selected: still not passed on (the graph would delete the node)
    assert len(_doc(page, node)["tracks"][0]["points"]) == 1
    # ComfyUI's undo (a capture listener on window) handles Ctrl+Z; the widget leaves it alone.
    page.keyboard.press("Control+z")
    assert len(_doc(page, node)["tracks"][0]["points"]) == 1
    keys = page.evaluate("T.documentKeys")
    assert "z" in keys and not {"Delete", "Backspace"} & set(keys)


def test_a_click_lets_the_mouseup_through_for_comfyuis_change_tracker(page):
    node = _new_node(page)
    page.evaluate("() => { window.mouseups = 0; window.addEventListener('mouseup', () => window.mouseups++); }")
    _click(page, node, 0.3, 0.3)
    _drag(page, node, (0.3, 0.3), (0.5, 0.5))
    assert page.evaluate("window.mouseups") == 2


def test_a_click_on_the_curve_inserts_a_point_there_and_tracks_are_selectable(page):
    node = _new_node(page)
    _click(page, node, 0.1, 0.5)
    _click(page, node, 0.9, 0.5)
    _click(page, node, 0.5, 0.5)  # on the straight segment: between the two
    frame = _state(page, node)["frame"]
    _assert_points(_doc(page, node)["tracks"][0]["points"], [(0.1, 0.5), (0.5, 0.5), (0.9, 0.5)], frame)

    _press(page, node, "+ Track")
    _press(page, node, "+ Track")  # a second press while the new track is empty adds nothing
    _click(page, node, 0.5, 0.9)
    assert _state(page, node)["chips"] == ["1", "2"]
    _press(page, node, "1")
    _click(page, node, 0.9, 0.1)
    tracks = _doc(page, node)["tracks"]
    assert len(tracks[0]["points"]) == 4 and len(tracks[1]["points"]) == 1
    # Grabbing a point of another track makes that track the active one.
    _drag(page, node, (0.5, 0.9), (0.45, 0.95))
    assert _state(page, node)["active"] == 1
    _press(page, node, "− Track")
    assert len(_doc(page, node)["tracks"]) == 1


def test_resizing_the_node_resizes_the_canvas_and_keeps_the_drawing(page):
    node = _new_node(page, box=[420, 330])
    for x, y in TRACK_1:
        _click(page, node, x, y)
    before = _state(page, node)
    page.evaluate("([i, box]) => T.resize(i, box)", [node, [700, 560]])
    page.wait_for_function("([i, w]) => T.editor(i).canvas.width !== w", arg=[node, before["canvasPixels"][0]])
    after = _state(page, node)
    assert after["frame"][0] > before["frame"][0] * 1.4
    assert after["text"] == before["text"], "a resize alone does not rewrite the drawing"
    # The points are where the drawing says, at the new size: grab one there.
    _drag(page, node, TRACK_1[2], (0.9, 0.9))
    doc = _doc(page, node)
    _assert_points(doc["tracks"][0]["points"], [*TRACK_1[:2], (0.9, 0.9)], after["frame"])
    assert doc["canvas"] == {"width": round(after["frame"][0]), "height": round(after["frame"][1])}


def test_changing_the_output_size_or_frames_updates_the_json(page):
    node = _new_node(page)
    _click(page, node, 0.2, 0.2)
    _click(page, node, 0.8, 0.8)
    points = _doc(page, node)["tracks"]
    page.evaluate("(i) => T.setNumber(i, 'frames', 25)", node)
    assert _doc(page, node)["frames"] == 25
    page.evaluate("(i) => T.setNumber(i, 'height', 672)", node)  # now square
    doc = _doc(page, node)
    assert doc["tracks"] == points, "normalised points stay put"
    assert doc["canvas"]["width"] == doc["canvas"]["height"]
    assert "25 frames" in _state(page, node)["status"]


def test_other_trajectory_text_is_shown_as_a_problem_and_kept_until_drawing(page):
    kjnodes = '[{"x": 10, "y": 20}, {"x": 30, "y": 40}]'
    node = _new_node(page, text=kjnodes)
    state = _state(page, node)
    assert state["tracks"] == [] and state["text"] == kjnodes
    assert "not the widget's format" in state["status"]
    _click(page, node, 0.5, 0.5)
    parsed = parse_trajectory(_state(page, node)["text"])
    assert len(parsed.tracks) == 1
    _assert_points(parsed.tracks[0], [(0.5, 0.5)], _state(page, node)["frame"])


def test_the_reference_image_comes_from_the_run_or_a_drop_or_a_paste(page):
    node = _new_node(page)
    page.evaluate("(i) => T.node(i).onExecuted({trajectory_image: [{filename: 'easyanimate_trajectory_1.png', "
                  "subfolder: '', type: 'temp'}]})", node)
    page.wait_for_function("(i) => T.editor(i).image", arg=node)
    state = _state(page, node)
    assert state["image"] == [336, 192]
    assert "/api/view?filename=easyanimate_trajectory_1.png&type=temp&subfolder=" in state["imageUrl"]
    page.evaluate("(i) => T.node(i).onExecuted({images: []})", node)  # other outputs leave the image alone
    assert _state(page, node)["imageUrl"] == state["imageUrl"]

    png = base64.b64encode(_reference_png()).decode()
    for event in ("drop", "paste"):
        page.evaluate(
            """async ([i, png, event]) => {
                const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
                const canvas = T.editor(i).canvas;
                T.editor(i).image = null;
                if (event === 'drop') {
                    canvas.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
                    canvas.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
                } else {
                    canvas.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true}));
                }
            }""",
            [node, png, event],
        )
        page.wait_for_function("(i) => T.editor(i).image", arg=node)
        assert _state(page, node)["imageUrl"].startswith("blob:"), event


def test_the_image_is_shown_as_the_resize_mode_fits_it(page):
    """The 336 x 192 reference in a square frame: crop shows its centre (the gradient starts at column 72), pad the
    whole image with black bands, stretch the whole image squeezed; changing the mode redraws."""
    node = _new_node(page, width=384, height=384)
    page.evaluate("(i) => T.node(i).onExecuted({trajectory_image: [{filename: 'ref.png', subfolder: '', "
                  "type: 'temp'}]})", node)
    page.wait_for_function("(i) => T.editor(i).image", arg=node)

    def pixel(x, y):
        return np.array(page.evaluate("([i, x, y]) => T.framePixel(i, x, y)", [node, x, y]), dtype=float)

    def blue_at(column):  # the reference's gradient (blue: cv2 writes BGR) at a column, under the 25 % darkening
        return (40 + 160 * column / 335) * 0.75

    shown = {}
    for mode in ("crop", "pad", "stretch"):
        if mode != "crop":  # crop is the default
            page.evaluate("([i, v]) => T.setNumber(i, 'resize_mode', v)", [node, mode])
        shown[mode] = {"left": pixel(0.03, 0.5), "top": pixel(0.5, 0.03), "centre": pixel(0.5, 0.5)}
        assert np.abs(shown[mode]["centre"] - 255 * 0.75).max() <= 6, (mode, shown[mode])  # the white square
    assert abs(shown["crop"]["left"][2] - blue_at(72 + 0.03 * 192)) <= 8, shown["crop"]
    assert abs(shown["crop"]["top"][1] - 90 * 0.75) <= 6, shown["crop"]
    assert shown["pad"]["top"].max() <= 3, shown["pad"]  # a black band above the image
    assert abs(shown["pad"]["left"][2] - blue_at(0.03 * 336)) <= 8, shown["pad"]
    assert abs(shown["stretch"]["left"][2] - blue_at(0.03 * 336)) <= 8, shown["stretch"]
    assert abs(shown["stretch"]["top"][1] - 90 * 0.75) <= 6, shown["stretch"]


def test_the_image_survives_comfyuis_undo_which_rebuilds_the_node(page):
    graph = {"id": "graph-1"}
    node = _new_node(page, graph=graph, id=9)
    page.evaluate("(i) => T.node(i).onExecuted({trajectory_image: [{filename: 'a.png', subfolder: '', "
                  "type: 'temp'}]})", node)
    page.wait_for_function("(i) => T.editor(i).image", arg=node)
    rebuilt = _new_node(page, graph=graph, id=9)
    page.evaluate("([i, text]) => T.configure(i, text)", [rebuilt, _state(page, node)["text"]])
    page.wait_for_function("(i) => T.editor(i).image", arg=rebuilt)
    assert _state(page, rebuilt)["imageUrl"] == _state(page, node)["imageUrl"]
    other = _new_node(page, graph={"id": "graph-2"}, id=9)  # the same node id in another workflow
    page.evaluate("(i) => T.configure(i, T.text(i))", other)
    page.wait_for_timeout(300)
    assert _state(page, other)["image"] is None


def test_screenshot_shows_the_tracks_frames_and_image(page, tmp_path):
    node = _new_node(page, frames=25, box=[640, 460])
    page.evaluate("(i) => T.node(i).onExecuted({trajectory_image: [{filename: 'ref.png', subfolder: '', "
                  "type: 'temp'}]})", node)
    page.wait_for_function("(i) => T.editor(i).image", arg=node)
    _draw_two_tracks(page, node)
    page.mouse.move(5, 5)
    shot = tmp_path / "trajectory_widget.png"
    page.locator(".host").first.screenshot(path=str(shot))
    image = cv2.imread(str(shot))[..., ::-1]  # RGB
    assert image.shape[0] >= 400 and image.shape[1] >= 600
    # The control points are drawn in the track's colour where they were clicked.
    host = page.locator(".host").first.bounding_box()
    for x, y in TRACK_1[:2]:
        px, py = _at(page, node, x, y)
        sample = image[round(py - host["y"]), round(px - host["x"])].astype(int)
        assert np.abs(sample - np.array(COLOR_TRACK_1)).max() <= 40, (x, y, sample)
    print(f"widget screenshot: {shot}")


# ---------------------------------------------------------------------------------------------------------------
# The widget's resampling = the Python resampling


DRAWINGS = [
    ([[0.5, 0.5]], 49, 1.75),
    ([[0.1, 0.8], [0.9, 0.2]], 49, 1.75),
    ([[0.1, 0.8], [0.45, 0.3], [0.9, 0.5]], 49, 672 / 384),
    ([[0.1, 0.8], [0.45, 0.3], [0.9, 0.5]], 1, 1.0),
    ([[0.1, 0.8], [0.45, 0.3], [0.9, 0.5]], 2, 1.0),
    ([[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8], [0.2, 0.2]], 161, 0.5625),
    ([[0.3, 0.3], [0.3, 0.3], [0.6, 0.7], [0.6, 0.7], [0.9, 0.1]], 25, 1.3),  # repeated points
    ([[0.4, 0.4], [0.4, 0.4]], 9, 1.0),  # zero length
]


def test_js_resampling_equals_python(page):
    rng = np.random.default_rng(7)
    drawings = list(DRAWINGS)
    for n in (3, 4, 6, 9):
        drawings.append((rng.random((n, 2)).round(5).tolist(), int(rng.integers(1, 40)) * 4 + 1,
                         float(rng.uniform(0.4, 2.5))))
    for points, frames, aspect in drawings:
        js = np.array(page.evaluate("([p, f, a]) => T.module.resampleTrack(p, f, a)", [points, frames, aspect]))
        py = resample_track(points, frames, aspect=aspect)
        assert js.shape == py.shape == (frames, 2)
        np.testing.assert_allclose(js, py, atol=1e-6, rtol=0, err_msg=f"{points} {frames} {aspect}")


def test_js_resampling_of_a_drawn_track_equals_the_python_side(page):
    node = _new_node(page)
    _draw_two_tracks(page, node)
    text = _state(page, node)["text"]
    parsed = parse_trajectory(text)
    expected = parsed.resample(49)
    for t, track in enumerate(json.loads(text)["tracks"]):
        canvas = json.loads(text)["canvas"]
        js = page.evaluate("([p, f, a]) => T.module.resampleTrack(p, f, a)",
                           [track["points"], 49, canvas["width"] / canvas["height"]])
        np.testing.assert_allclose(np.array(js), expected[t], atol=1e-6, rtol=0)
        shown = page.evaluate("([i, t]) => T.module.resampleTrack(T.editor(i).tracks[t], T.editor(i).frames(), "
                              "T.editor(i).aspect())", [node, t])
        np.testing.assert_allclose(np.array(shown), expected[t], atol=1e-6, rtol=0, err_msg="dots shown")


# ---------------------------------------------------------------------------------------------------------------
# The node's side of the contract: the image input goes to the canvas as a temp preview


@pytest.fixture()
def comfy_stand_in(monkeypatch, tmp_path):
    """folder_paths and server.PromptServer, as far as nodes/_comfy.py uses them for the widget's image."""
    import sys
    import types

    sent = []
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_temp_directory = lambda: str(tmp_path / "temp")
    server = types.ModuleType("server")

    class PromptServer:
        client_id = "client-1"

        def send_sync(self, event, data, sid=None):
            sent.append((event, data, sid))

    PromptServer.instance = PromptServer()
    server.PromptServer = PromptServer
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    monkeypatch.setitem(sys.modules, "server", server)
    return tmp_path / "temp", sent


def _trajectory_node():
    from conftest import load_pack

    return load_pack().NODE_CLASS_MAPPINGS["EasyAnimateTrajectory"]()


def test_the_node_sends_its_image_input_to_the_canvas(comfy_stand_in):
    import torch

    temp, sent = comfy_stand_in
    image = torch.rand(2, 32, 48, 3)
    drawing = json.dumps({"version": 1, "tracks": [{"points": [[0.1, 0.1], [0.9, 0.9]]}]})
    out = _trajectory_node().build(trajectory=drawing, width=48, height=32, frames=5, image=image, unique_id="9")
    (ref,) = out["ui"]["trajectory_image"]
    assert ref["type"] == "temp" and ref["subfolder"] == ""
    saved = cv2.imread(str(temp / ref["filename"]))[..., ::-1]
    np.testing.assert_allclose(saved / 255.0, image[0].numpy(), atol=0.5 / 255 + 1e-6)
    trajectory, video = out["result"]
    assert video.shape == (5, 32, 48, 3) and len(trajectory.tracks) == 1
    assert sent == []

    # An empty drawing still shows the image (the first run of a workflow), then stops with its message.
    with pytest.raises(ValueError, match="draw at least one track"):
        _trajectory_node().build(trajectory='{"version": 1, "tracks": []}', width=48, height=32, frames=5,
                                 image=image, unique_id="9")
    ((event, data, sid),) = sent
    assert event == "executed" and data["node"] == data["display_node"] == "9" and sid == "client-1"
    assert data["output"]["trajectory_image"][0]["filename"].startswith("easyanimate_trajectory_")


def test_without_comfyui_or_image_the_node_returns_plain_outputs(monkeypatch):
    import sys

    import torch

    for name in ("folder_paths", "server"):
        monkeypatch.setitem(sys.modules, name, None)  # not importable, even once other tests put ComfyUI on the path
    drawing = json.dumps({"version": 1, "tracks": [{"points": [[0.5, 0.5]]}]})
    node = _trajectory_node()
    with_image = node.build(trajectory=drawing, width=48, height=32, frames=5, image=torch.rand(1, 32, 48, 3))
    without = node.build(trajectory=drawing, width=48, height=32, frames=5)
    assert isinstance(with_image, tuple) and isinstance(without, tuple)
    assert torch.equal(with_image[1], without[1])


def test_the_runs_image_comes_back_after_a_page_reload(page):
    """A reload restores the workflow (the drawing) but not the page's memory: the run's preview image comes back
    from the tab's session storage; a dropped image (a blob of the old page) cannot and is not asked for."""
    graph = {"id": "graph-reload"}
    node = _new_node(page, graph=graph, id=4)
    page.evaluate("(i) => T.node(i).onExecuted({trajectory_image: [{filename: 'run.png', subfolder: '', "
                  "type: 'temp'}]})", node)
    page.wait_for_function("(i) => T.editor(i).image", arg=node)
    shown, text = _state(page, node)["imageUrl"], _state(page, node)["text"]
    page.reload()
    page.wait_for_function("document.body.dataset.ready === '1' || document.body.dataset.error")
    reloaded = _new_node(page, graph=graph, id=4)
    page.evaluate("([i, text]) => T.configure(i, text)", [reloaded, text])
    page.wait_for_function("(i) => T.editor(i).image", arg=reloaded)
    assert _state(page, reloaded)["imageUrl"] == shown
    stranger = _new_node(page, graph=graph, id=5)
    page.evaluate("(i) => T.configure(i, T.text(i))", stranger)
    page.wait_for_timeout(300)
    assert _state(page, stranger)["image"] is None
