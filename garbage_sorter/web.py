"""The web page: the same assistant as the desktop app, served by Gradio for people without it.

``build_demo(classifier)`` builds the page around one loaded :class:`Classifier`; ``serve()``
queues and launches it (``garbage-sorter web``). The page shows the top three classes, a bin card
for the chosen region, the isolated object and, on request, a Grad-CAM heatmap. The endpoint
``/predict`` takes one image and returns what ``gr.Label`` shows, for ``gradio_client`` users.

This is the only module that imports gradio; the CLI imports it only for ``garbage-sorter web``.
Uploaded files reach the core's ``load_image`` unopened, so the core's checks (decompression bombs,
damaged files, size) and its messages apply here exactly as in the app and the CLI.
"""

from __future__ import annotations

import html
import sys
from importlib import resources
from pathlib import Path

import gradio as gr
from PIL import Image, ImageDraw

from .bins import Region, load_regions
from .classifier import UNFAMILIAR_MESSAGE, UNSURE_MESSAGE, Classifier, Prediction
from .images import IMAGE_SUFFIXES, ImageLoadError, load_image

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # a phone photo is 2-8 MB; the core's own limit is 50 MB
# The model itself runs one batch at a time (Classifier holds a lock); two workers let one request
# decode its upload while another is in the model. More only adds memory on a small server.
CONCURRENCY = 2
QUEUE_SIZE = 64  # beyond this, new requests are told the server is busy instead of piling up
PREVIEW_SIDE = 512  # the isolated-object preview does not need the full photo

# System fonts only: the page must render on a machine with no internet (a kiosk, a LAN).
THEME = gr.themes.Soft(
    primary_hue="green",
    font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
    font_mono=["ui-monospace", "monospace"],
)


def build_demo(classifier: Classifier) -> gr.Blocks:
    """The page around ``classifier``, which is shared by all requests and never changed by them."""
    regions = load_regions()
    isolation = _isolation_available()
    isolate_first = isolates_by_default()
    examples = _example_photos()

    def predict(upload: dict | None) -> dict[str, float]:
        """Class probabilities of one photo, as ``classify`` and the page's default give them
        (the public ``/predict`` endpoint)."""
        image = _uploaded_path(upload)
        if image is None:
            raise _user_error("Send a photo.")
        return _classify(classifier, image, crop=isolate_first).probabilities

    def show(upload: dict | None, region_id: str, isolate: bool):
        image = _uploaded_path(upload)
        if image is None:
            return (
                None,
                _empty_card(),
                gr.update(value=None, visible=False),
                gr.update(value=None, visible=False),
            )
        prediction = _classify(classifier, image, crop=isolate)
        region = regions.get(region_id) or classifier.region
        preview = _preview(image, prediction) if isolate else None
        return (
            prediction.probabilities,
            _bin_card(prediction, region),
            gr.update(value=preview, visible=preview is not None),
            gr.update(value=None, visible=False),
        )

    def explain(upload: dict | None, isolate: bool):
        image = _uploaded_path(upload)
        if image is None:
            raise _user_error("Upload a photo first.")
        from .explain import ExplainError, gradcam

        try:
            pil = load_image(image)
            if isolate:  # explain what the model saw: the isolated object
                box = classifier.predict(pil, crop=True).crop_box
                pil = pil.crop(box) if box else pil
            overlay = gradcam(classifier, pil).overlay()
        except ImageLoadError as exc:
            raise _user_error(f"That file cannot be used: {exc}.") from None
        except ExplainError as exc:
            raise _user_error(f"No heatmap for this model: {exc}.") from None
        return gr.update(value=overlay, visible=True)

    region_choices = [(region.title, region_id) for region_id, region in regions.items()]
    with gr.Blocks(
        title="Garbage Sorter", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as demo:
        gr.Markdown(
            "# Garbage Sorter\n"
            "Which bin does it go in? Upload, paste or take a photo of **one item** of waste."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                photo = gr.Image(
                    label="Photo of the item",
                    type="filepath",
                    sources=["upload", "webcam", "clipboard"],
                    height=360,
                )
                region = gr.Dropdown(
                    region_choices,
                    value=classifier.region.id,
                    label="Your region",
                    info="Bins differ from place to place.",
                )
                isolate = gr.Checkbox(
                    isolate_first,
                    label="Isolate the object first",
                    info="Crop to the item when it is small in a busy photo.",
                    visible=isolation,
                )
                if examples:
                    gr.Examples(
                        [[str(p)] for p in examples],
                        inputs=[photo],
                        label="Example photos",
                        examples_per_page=len(examples),
                    )
            with gr.Column(scale=1):
                card = gr.HTML(_empty_card(), elem_id="bin-card")
                label = gr.Label(num_top_classes=3, label="What the model sees")
                preview = gr.Image(
                    label="Isolated object",
                    elem_id="isolated",
                    type="pil",
                    format="jpeg",
                    interactive=False,
                    visible=False,
                    height=280,
                )
                why = gr.Button("Why? Show where the model looked", variant="secondary")
                heatmap = gr.Image(
                    label="Where the model looked (red = most)",
                    elem_id="heatmap",
                    type="pil",
                    format="jpeg",
                    interactive=False,
                    visible=False,
                    height=280,
                )
        gr.Markdown(
            f"<small>Model: {html.escape(classifier.name)} · photos are processed on this server "
            "and deleted within two hours.</small>"
        )

        # preprocess=False: the functions get the upload's payload, see _uploaded_path().
        gr.on(
            [photo.change, region.change, isolate.change],
            show,
            inputs=[photo, region, isolate],
            outputs=[label, card, preview, heatmap],
            preprocess=False,
            api_visibility="private",
            concurrency_id="model",
        )
        why.click(
            explain,
            inputs=[photo, isolate],
            outputs=[heatmap],
            preprocess=False,
            api_visibility="private",
            concurrency_id="model",
        )
        # No trigger on the page, which has its own event above: this is the API for scripts.
        gr.on(
            [],
            predict,
            inputs=[photo],
            outputs=[label],
            preprocess=False,
            api_name="predict",
            concurrency_id="model",
        )
    return demo


def serve(
    classifier: Classifier, host: str = "127.0.0.1", port: int = 7860, share: bool = False
) -> int:
    """Serve the page until interrupted; the exit status for the CLI (1 when it cannot start)."""
    demo = build_demo(classifier)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    examples = _example_photos()
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            share=share,
            max_file_size=MAX_UPLOAD_BYTES,
            # Example photos are the only files outside the upload folder the page may serve.
            allowed_paths=sorted({str(p.parent) for p in examples}),
            theme=THEME,
            footer_links=["api", "settings"],
            run_history=False,  # a shared kiosk browser must not keep earlier users' photos
            show_error=False,
            prevent_thread_lock=True,
        )
    except OSError as exc:  # the port is taken, or the host cannot be bound
        print(f"garbage-sorter: cannot serve on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        # After starting the server, Gradio fetches its own page once with a 3-second timeout
        # and gives up if that fails: on a slow or busy machine, or with an HTTP proxy set in the
        # environment, it does though the server is up. Keep serving then.
        if "localhost is not accessible" not in str(exc) or not demo.is_running:
            raise
        print(
            "warning: the page did not answer Gradio's start-up check (a busy machine, or an HTTP "
            f"proxy for localhost?); serving on http://{host}:{port}/ anyway",
            file=sys.stderr,
        )
    demo.block_thread()  # returns on Ctrl+C, after closing the server
    return 0


def _uploaded_path(payload: dict | None) -> str | None:
    """The path of an uploaded photo, unopened.

    gr.Image would open the file with PIL itself, so a non-image would fail inside Gradio with a
    message naming a temporary path; taking the payload instead lets the core's loader do the
    checks (bombs, damaged files) and give the message. Gradio has already checked by then that
    the path lies in its upload folder.
    """
    if payload is None:
        return None
    path = payload.get("path") if isinstance(payload, dict) else None
    if not path:
        raise _user_error("No photo was received; try uploading it again.")
    return path


def _classify(classifier: Classifier, image: str, crop: bool | None) -> Prediction:
    try:
        return classifier.predict(image, crop=crop)
    except ImageLoadError as exc:
        raise _user_error(f"That file cannot be used: {exc}.") from None


def _user_error(message: str) -> gr.Error:
    """An error shown to the person; not logged with a traceback, since it is not the server's."""
    return gr.Error(html.escape(message), print_exception=False)


def _bin_card(prediction: Prediction, region: Region) -> str:
    """The answer as a card: the bin's colour, its name, the rule's note, the region's caveat."""
    esc = html.escape
    region_line = f"<div style='{_REGION_STYLE}'>{esc(region.title)}"
    if region.note:
        region_line += f" · {esc(region.note)}"
    region_line += "</div>"
    if prediction.uncertain:
        return (
            f"<div class='gs-card' style='{_CARD_STYLE}'>{_bin_icon('#9e9e9e', '?')}"
            f"<div><div style='{_KICKER_STYLE}'>Best guess: {esc(prediction.label)}</div>"
            f"<div style='{_TITLE_STYLE}'>Not sure</div>"
            f"<div>{esc(UNFAMILIAR_MESSAGE if prediction.unfamiliar else UNSURE_MESSAGE)}</div>"
            f"{region_line}</div></div>"
        )
    bin_ = region.bin_for(prediction.label)
    return (
        f"<div class='gs-card' style='{_CARD_STYLE}'>{_bin_icon(bin_.colour)}"
        f"<div><div style='{_KICKER_STYLE}'>{esc(prediction.label)} "
        f"({prediction.confidence:.0%}) goes in</div>"
        f"<div style='{_TITLE_STYLE}'>{esc(bin_.name)}</div>"
        f"<div>{esc(bin_.note)}</div>{region_line}</div></div>"
    )


def _empty_card() -> str:
    return (
        f"<div class='gs-card' style='{_CARD_STYLE}'>{_bin_icon('#c8c8c8')}"
        f"<div><div style='{_TITLE_STYLE}'>Which bin?</div>"
        "<div>Add a photo of one item and the bin for your region appears here.</div></div></div>"
    )


# Inline styles: the card must look the same whoever launches the Blocks, and Gradio 6 takes
# custom CSS only at launch(). The CSS variables follow Gradio's light and dark themes.
_CARD_STYLE = (
    "display:flex;gap:18px;align-items:center;padding:16px 18px;border-radius:14px;"
    "border:1px solid var(--border-color-primary);background:var(--background-fill-secondary);"
    "min-height:96px"
)
_KICKER_STYLE = "font-size:0.9em;opacity:0.75;text-transform:none"
_TITLE_STYLE = "font-size:1.45em;font-weight:650;line-height:1.25;margin:2px 0 4px"
_REGION_STYLE = "font-size:0.82em;opacity:0.7;margin-top:8px"


def _bin_icon(colour: str, mark: str = "") -> str:
    """A wheelie bin drawn in ``colour`` (validated ``#rrggbb`` from the region data)."""
    text = (
        (
            f"<text x='28' y='47' text-anchor='middle' font-size='24' font-weight='700' "
            f"fill='#fff'>{html.escape(mark)}</text>"
        )
        if mark
        else ""
    )
    return (
        "<svg width='56' height='68' viewBox='0 0 56 68' role='img' aria-label='bin colour' "
        "style='flex:none'>"
        f"<rect x='20' y='1' width='16' height='6' rx='2' fill='{colour}'/>"
        f"<rect x='3' y='7' width='50' height='8' rx='3' fill='{colour}' "
        "stroke='rgba(0,0,0,.25)'/>"
        f"<path d='M7 17h42l-4 44a5 5 0 0 1-5 5H16a5 5 0 0 1-5-5z' fill='{colour}' "
        "stroke='rgba(0,0,0,.25)'/>"
        f"{text}</svg>"
    )


def _preview(image: str, prediction: Prediction) -> Image.Image | None:
    """The photo with the isolation box drawn on it, scaled down for the page."""
    pil = load_image(image)
    if prediction.crop_box:
        draw = ImageDraw.Draw(pil)
        width = max(3, round(max(pil.size) / 150))
        draw.rectangle(prediction.crop_box, outline=(0, 200, 83), width=width)
    pil.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return pil


def _isolation_available() -> bool:
    """Object isolation is offered only when the core's segmentation module can be imported."""
    try:
        from . import segmentation  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import means the option is hidden
        return False
    return True


def isolates_by_default() -> bool:
    """Whether the page and ``/predict`` isolate the object unless told not to: as ``classify``
    does (``segmentation.ISOLATE_BY_DEFAULT``), where isolation can be offered at all."""
    if not _isolation_available():
        return False
    from .segmentation import ISOLATE_BY_DEFAULT

    return ISOLATE_BY_DEFAULT


def _example_photos() -> list[Path]:
    """One example photo per class folder: bundled ones if the package has them, else a checkout's
    test photos."""
    bundled = Path(str(resources.files("garbage_sorter.resources") / "examples"))
    checkout = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "photos"
    for folder in (bundled, checkout):
        if folder.is_dir():
            found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            first_per_folder = {p.parent: p for p in reversed(found)}
            if found:
                return sorted(first_per_folder.values())[:8]
    return []
