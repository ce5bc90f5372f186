"""The ``garbage-sorter`` command: app (the default), classify, evaluate, web, train, export, adapt.

Exit status: 0 all went well, 1 some inputs failed (the rest still answered), 2 usage error.
Bad input gets a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

SUBCOMMANDS = ("app", "classify", "evaluate", "web", "train", "export", "adapt")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH", help="checkpoint file (default: the bundled model)")
    p.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto: CUDA when a GPU is present",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="garbage-sorter",
        description="Which bin does this item of waste go in? Without a subcommand, opens the app.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")

    app = sub.add_parser(
        "app",
        help="open the desktop app (the default: `garbage-sorter [OPTIONS] [PHOTO...]` is the same)",
    )
    _model_options(app)
    app.add_argument(
        "--camera", metavar="INDEX|PATH", help="camera index or a video file to use as camera"
    )
    app.add_argument("--region", help="bin profile, e.g. de, uk, us")
    app.add_argument(
        "photos", nargs="*", metavar="PHOTO", help="photos or folders to classify at launch"
    )

    classify = sub.add_parser("classify", help="classify image files or folders")
    _model_options(classify)
    classify.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files or folders (recursive)"
    )
    classify.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    classify.add_argument(
        "--region", help="bin profile (default: the saved choice, else 'default')"
    )
    crop = classify.add_mutually_exclusive_group()
    crop.add_argument(
        "--crop",
        dest="crop",
        action="store_true",
        default=None,
        help="isolate the object before classifying (slower; off by default: on real photos it "
        "did not pay)",
    )
    crop.add_argument(
        "--no-crop",
        dest="crop",
        action="store_false",
        help="classify the whole image (the default)",
    )
    classify.add_argument(
        "--isolation",
        default=None,
        choices=("auto", "u2netp", "grabcut"),
        help="isolation backend for --crop (default: the model's recommendation)",
    )
    classify.add_argument("--tta", action="store_true", help="average over a flipped copy too")

    evaluate = sub.add_parser("evaluate", help="accuracy and per-class figures on labelled photos")
    _model_options(evaluate)
    evaluate.add_argument(
        "dir",
        metavar="DIR",
        help="folder-per-class tree, or a split file/folder written by train (test.txt)",
    )
    evaluate.add_argument("--json", action="store_true", help="print the figures as JSON")
    evaluate.add_argument(
        "--subset", default="test", help="split to use when DIR is a split folder"
    )
    crop = evaluate.add_mutually_exclusive_group()
    crop.add_argument("--crop", dest="crop", action="store_true", default=None)
    crop.add_argument("--no-crop", dest="crop", action="store_false")

    web = sub.add_parser("web", help="serve the assistant as a web page (Gradio)")
    _model_options(web)
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    web.add_argument("--port", type=int, default=7860)
    web.add_argument("--share", action="store_true", help="also make a public Gradio share link")

    sub.add_parser("train", help="train a model (see garbage-sorter train --help)", add_help=False)

    export = sub.add_parser("export", help="export the model for other runtimes")
    _model_options(export)
    export.add_argument("--onnx", metavar="OUT", required=True, help="write an ONNX file")
    export.add_argument(
        "--int8", action="store_true", help="also quantise it to int8 (OUT with .int8.onnx)"
    )
    export.add_argument(
        "--calibration",
        metavar="PATH",
        help="photos to calibrate --int8 on: a folder, or a split file/folder written by train "
        "(default: the model's training photos, when on this machine)",
    )

    adapt = sub.add_parser(
        "adapt", help="adapt the model to one setting (one camera, bin and light) from its photos"
    )
    adapt.add_argument("--out", metavar="MODEL.pt", required=True, help="write the adapted model")
    adapt.add_argument("--model", metavar="BASE", help="model to adapt (default: the bundled one)")
    adapt.add_argument(
        "--labelled",
        metavar="DIR",
        help="a folder per class (cardboard glass metal paper plastic trash, any subset) of "
        "photos from the setting with their right class",
    )
    adapt.add_argument(
        "photos",
        nargs="*",
        metavar="PHOTO_OR_FOLDER",
        help="unlabelled photos of the setting (folders are walked recursively)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from .training.train import cli

        return cli(argv[1:])
    if _means_app(argv):
        argv.insert(0, "app")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    command = args.command or "app"
    try:
        if command == "app":
            return _app(args)
        if command == "classify":
            return _classify(args)
        if command == "evaluate":
            return _evaluate(args)
        if command == "web":
            return _web(args)
        if command == "export":
            return _export(args)
        if command == "adapt":
            return _adapt(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`classify --json DIR | head -1`): stop quietly, as other Unix
        # tools do, and point stdout at nothing so the interpreter's final flush cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the signal
    except _Failure as exc:
        print(f"garbage-sorter: {exc}", file=sys.stderr)
        return exc.status
    return 2


def _means_app(argv: list[str]) -> bool:
    """Whether ``argv`` is the bare command: nothing, app options, or photos (``Open with``).

    A plain word that is no subcommand stays a usage error (``clasify`` is a typo, not a photo),
    while anything that looks like a path goes to the app, which reports a missing one.
    """
    if not argv:
        return True
    first = argv[0]
    if first in SUBCOMMANDS or first in ("-h", "--help", "--version"):
        return False
    return first.startswith("-") or "." in first or "/" in first or Path(first).exists()


class _Failure(Exception):
    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def _load_classifier(args: argparse.Namespace, **kwargs):
    from .classifier import Classifier
    from .errors import CheckpointError

    try:
        return Classifier.load(getattr(args, "model", None), device=args.device, **kwargs)
    except CheckpointError as exc:
        raise _Failure(str(exc)) from None
    except ValueError as exc:  # unknown region, no CUDA
        raise _Failure(str(exc), 2) from None


def _app(args: argparse.Namespace) -> int:
    try:
        from .ui.app import run
    except ImportError as exc:
        raise _Failure(f"the desktop app cannot start: {exc}") from None
    return run(
        model=args.model,
        device=args.device,
        camera=args.camera,
        region=args.region,
        photos=args.photos,
    )


def _classify(args: argparse.Namespace) -> int:
    from .images import ImageLoadError, iter_image_paths
    from .segmentation import ISOLATE_BY_DEFAULT

    kwargs = {"region": args.region}
    if args.isolation:
        kwargs["isolation"] = args.isolation
    clf = _load_classifier(args, **kwargs)
    paths = list(iter_image_paths(args.paths))
    if not paths:
        raise _Failure("no images found in " + ", ".join(args.paths))
    failed = 0
    rows: list[tuple[str, str, str, str]] = []
    show_bar = not args.json and len(paths) > 10 and sys.stderr.isatty()
    started = time.perf_counter()
    crop = ISOLATE_BY_DEFAULT if args.crop is None else args.crop
    # The next batch is decoded in a thread while the network runs this one (bench/folder_throughput.py).
    answers = clf.predict_paths(paths, crop=crop, tta=args.tta, batch_size=16)
    for i, (path, answer) in enumerate(zip(paths, answers, strict=True), 1):
        if isinstance(answer, ImageLoadError):
            failed += 1
        _emit(path, answer, args.json, rows)
        if show_bar:
            rate = i / (time.perf_counter() - started)
            print(
                f"\r\033[K{i}/{len(paths)}  {rate:.1f} images/s",
                end="",
                file=sys.stderr,
                flush=True,
            )
    if show_bar:
        print("\r\033[K", end="", file=sys.stderr)
    if not args.json:
        _print_table(rows)
        print(
            f"\n{len(paths) - failed} classified, {failed} failed; region {clf.region.title}; "
            f"model {clf.name} on {clf.device.type} ({clf.engine})"
        )
    return 1 if failed else 0


def _emit(path: Path, result, as_json: bool, rows: list) -> None:
    from .classifier import UNFAMILIAR_MESSAGE, UNSURE_MESSAGE, Prediction

    if isinstance(result, Prediction):
        if as_json:
            d = result.to_dict()
            print(
                json.dumps(
                    {
                        "path": str(path),
                        **{
                            k: d[k]
                            for k in (
                                "label",
                                "confidence",
                                "probabilities",
                                "bin",
                                "crop_box",
                                "uncertain",
                                "unfamiliar",
                                "shift",
                            )
                        },
                    }
                ),
                flush=True,
            )
        else:
            label = f"{result.label}?" if result.uncertain else result.label
            where = UNSURE_MESSAGE if result.uncertain else f"{result.bin.name}"
            if result.unfamiliar:
                where = UNFAMILIAR_MESSAGE
            rows.append((str(path), label, f"{result.confidence:.0%}", where))
    else:
        if as_json:
            print(json.dumps({"path": str(path), "error": str(result)}), flush=True)
        else:
            rows.append((str(path), "error", "", str(result)))


def _print_table(rows: list[tuple[str, str, str, str]]) -> None:
    if not rows:
        return
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(3)]
    head = ("file", "class", "conf", "bin")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=False)]
    print(f"{head[0]:<{widths[0]}}  {head[1]:<{widths[1]}}  {head[2]:>{widths[2]}}  {head[3]}")
    for path, label, conf, where in rows:
        shown = path if len(path) <= widths[0] else "…" + path[-(widths[0] - 1) :]
        print(f"{shown:<{widths[0]}}  {label:<{widths[1]}}  {conf:>{widths[2]}}  {where}")


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import EvaluationError, evaluate_path, format_report

    clf = _load_classifier(args)
    try:
        result = evaluate_path(clf, Path(args.dir), subset=args.subset, crop=args.crop)
    except EvaluationError as exc:
        raise _Failure(str(exc)) from None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_report(result))
    return 0


def _web(args: argparse.Namespace) -> int:
    try:
        from .web import serve
    except ImportError as exc:
        raise _Failure(f"the web page cannot start: {exc}") from None
    clf = _load_classifier(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine can use the page",
            file=sys.stderr,
        )
    return serve(clf, host=args.host, port=args.port, share=args.share)


def _export(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401 - a dependency; checked here for installs that left it out
    except ImportError:
        raise _Failure("export needs the onnx package: pip install onnx", 2) from None
    from .onnx_runtime import export_onnx, quantize_int8

    clf = _load_classifier(args, region=None)
    out = Path(args.onnx)
    export_onnx(clf.checkpoint, out)
    print(f"wrote {out}")
    if args.int8:
        q = out.with_suffix(".int8.onnx")
        try:
            quantize_int8(out, q, args.calibration)
        except ValueError as exc:  # no calibration photos
            raise _Failure(str(exc), 2) from None
        print(f"wrote {q}")
    return 0


def _adapt(args: argparse.Namespace) -> int:
    from .adapt import AdaptError, adapt

    started = time.perf_counter()
    report = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    try:
        record = adapt(
            args.out, args.photos, base=args.model, labelled=args.labelled, progress=report
        )
    except AdaptError as exc:
        raise _Failure(str(exc), exc.status) from None
    blocks = record["blocks"]
    where = "all layers" if blocks is None else f"the stem and {blocks} blocks"
    head = {"tuned": "last blocks and head tuned to the labelled photos"}.get(
        record["head"], f"{record['head']} head"
    )
    print(
        f"wrote {args.out}: adapted to {record['unlabelled_photos']} unlabelled and "
        f"{record['labelled_photos']} labelled photos (blend {record['alpha']:g} in {where}, "
        f"{head}; {record['chosen_by']}) in {time.perf_counter() - started:.0f} s"
    )
    if record.get("kept_shipped"):
        report(
            "note: the photos look unfamiliar to the model, but adapting to them made its "
            "answers less clear, so its statistics were kept as they are; a few labelled photos "
            "per class (--labelled) can still refit it"
        )
    elif not record["labelled_photos"] and record["alpha"] == 0:
        report(
            "note: the photos look familiar to the model, so its statistics were kept as they "
            "are; a few labelled photos per class (--labelled) can still refit it"
        )
    elif not record["labelled_photos"]:
        checked = (
            "only the answers' spread and certainty checked this adaptation"
            if "information" in record
            else "nothing checked this adaptation"
        )
        report(
            f"note: {checked}; a few labelled photos per class (--labelled) let it keep the "
            "original model where adapting does not help"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
