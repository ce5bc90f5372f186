"""Can unlabelled photos alone tell whether adapting to them helps? (issue 17)

``adapt`` without labels adapts every layer when most photos look unfamiliar to the base model,
and keeps the shipped model otherwise (bench/adapt.py). On unfamiliar settings that re-estimate
helped on some synthetic cameras and cost 10-17 points on another, and the confidence and the
entropy of the adapted model did not say which (BENCHMARKS.md). Here, on more settings, three
other label-free quantities of each candidate, measured on the adaptation half only:

* **feature distance**: the median, over the photos, of the Mahalanobis distance of the head's
  input (pooled features) from the nearest class of TrashNet training photos (class means, one
  Ledoit-Wolf shrunk covariance, fitted on the base model's features of 250 TrashNet training
  photos that no setting adapts on). Lower: the photos land where the head was trained.
* **information**: mutual information of the calibrated prediction, H(mean p) - mean H(p):
  high when each answer is confident and the answers differ photo to photo (SHOT's criterion).
* **style shift**: the median familiarity shift score (familiarity.py) of the candidate's
  network against the base model's training reference.

For each criterion, "chosen" is the candidate it ranks best on each setting; the test half
(never seen) gives the accuracy. Candidates: the shipped model, AdaBN of every layer, AdaBN of
the stem and 2 blocks, blend 0.5 of every layer, sequential blends 0.5 and 0.25 (bench/adapt.py).

    python bench/adapt_choice.py [--only "smart bin 0,trashnet"]
    python bench/adapt_choice.py --test   # settings no rule was chosen on
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt import (  # noqa: E402
    bin_camera,
    capped,
    halves,
    logits_of,
    manifest_groups,
    reference_tensors,
    scores,
    sequential_blend,
    split_lines,
    tensors,
)
from common import command_line, machine_line, table  # noqa: E402

from garbage_sorter.adapt import (  # noqa: E402
    Photos,
    adapt_model,
    adapted_layers,
    information,
    pooled_features,
    setting_statistics,
    shift_scores,
)
from garbage_sorter.classifier import bundled_model_path  # noqa: E402
from garbage_sorter.familiarity import fit_reference  # noqa: E402
from garbage_sorter.images import load_image  # noqa: E402
from garbage_sorter.model import load_checkpoint  # noqa: E402

CRITERIA = ("feature distance", "information", "style shift")
BETTER = {"feature distance": min, "information": max, "style shift": min}


def smart_bin(paths: list[Path], camera: int) -> list[Image.Image]:
    from garbage_sorter.training.backgrounds import smart_bin_set

    frames = smart_bin_set([np.asarray(load_image(p)) for p in paths], seed=camera)
    return [Image.fromarray(frame) for frame in frames]


def one_light(paths: list[Path], kind: str, seed: int) -> list[Image.Image]:
    """Photos under one fixed light of `backgrounds.relight` (the same draw for every photo)."""
    from garbage_sorter.training.backgrounds import relight

    return [
        Image.fromarray(
            np.clip(
                relight(np.asarray(load_image(p)), np.random.default_rng(seed), kind), 0, 255
            ).astype(np.uint8)
        )
        for p in paths
    ]


def dark_blue_bin(paths: list[Path]) -> list[Image.Image]:
    """The tests' dark bin (tests/test_familiarity.py): the photo on a shelf in a dark bin under
    a blue LED."""
    out = []
    for path in paths:
        rgb = np.asarray(load_image(path).resize((384, 288)), dtype=np.float32)
        canvas = np.full((360, 480, 3), 12.0, np.float32)
        canvas[36:324, 48:432] = rgb
        lit = canvas * np.array([0.25, 0.45, 1.0], np.float32) * 0.7
        out.append(Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8)))
    return out


def test_settings(ckpt, only: set[str] | None):
    """Settings no rule was chosen on: new cameras of both generators, and real TrashNet++ and
    TrashNet photos under one fixed light each. name -> (adaptation tensors, test tensors, test
    labels, adaptation labels)."""
    index = {c: i for i, c in enumerate(ckpt.classes)}
    tn_val = capped([r for r in split_lines("val.txt") if r[1] == "trashnet"])
    tn_test = capped(split_lines("test-trashnet.txt"))
    pp_adapt, pp_test = halves(manifest_groups("trashnetpp", "source_photo"))
    makers = {
        **{f"smart bin {c}": (tn_val, tn_test, lambda p, c=c: smart_bin(p, c)) for c in (3, 4)},
        "bin camera 5/6": (tn_val, tn_test, None),
        "trashnetpp blue LED": (pp_adapt, pp_test, lambda p: one_light(p, "blue_led", 5)),
        "trashnetpp orange LED": (pp_adapt, pp_test, lambda p: one_light(p, "orange_led", 6)),
        "trashnet low light": (tn_val, tn_test, lambda p: one_light(p, "low_light", 7)),
        "dark blue bin": (tn_val, tn_test, dark_blue_bin),
    }
    out = {}
    for name, (adapt_rows, test_rows, look) in makers.items():
        if only and name not in only:
            continue
        a_paths, t_paths = [r[2] for r in adapt_rows], [r[2] for r in test_rows]
        if look is None:  # the bin camera: other compositing draws for each half
            a_img, t_img = bin_camera(a_paths, 5), bin_camera(t_paths, 6)
        else:
            a_img, t_img = look(a_paths), look(t_paths)
        out[name] = (
            tensors(ckpt, a_img),
            tensors(ckpt, t_img),
            [index[r[0]] for r in test_rows],
            [index[r[0]] for r in adapt_rows],  # for bench/adapt.py's labelled draws
        )
    return out


def settings(ckpt, only: set[str] | None):
    """name -> (adaptation tensors, test tensors, test labels)."""
    index = {c: i for i, c in enumerate(ckpt.classes)}
    tn_val = capped([r for r in split_lines("val.txt") if r[1] == "trashnet"])
    tn_test = capped(split_lines("test-trashnet.txt"))
    val_paths, test_paths = [r[2] for r in tn_val], [r[2] for r in tn_test]
    test_y = [index[r[0]] for r in tn_test]
    makers = {
        **{
            f"smart bin {c}": lambda c=c: (smart_bin(val_paths, c), smart_bin(test_paths, c))
            for c in (0, 1, 2)
        },
        **{
            f"bin camera {a}/{b}": lambda a=a, b=b: (
                bin_camera(val_paths, a),
                bin_camera(test_paths, b),
            )
            for a, b in ((1, 2), (3, 4))
        },
    }
    out = {}
    for name, make in makers.items():
        if not only or name in only:
            a_img, t_img = make()
            out[name] = (tensors(ckpt, a_img), tensors(ckpt, t_img), test_y)
    trained = {str(p) for _, _, p in split_lines("train.txt")}
    plain = {
        "trashnet": (capped([r for r in split_lines("train.txt") if r[1] == "trashnet"]), tn_test),
        "trashnetpp": halves(manifest_groups("trashnetpp", "source_photo")),
        "taco": halves(
            [r for r in manifest_groups("taco", "taco_image") if str(r[2].resolve()) not in trained]
        ),
    }
    for name, (adapt_rows, test_rows) in plain.items():
        if not only or name in only:
            out[name] = (
                tensors(ckpt, [r[2] for r in adapt_rows]),
                tensors(ckpt, [r[2] for r in test_rows]),
                [index[r[0]] for r in test_rows],
            )
    return out


class FeatureDistance:
    """Distance of pooled features from the nearest TrashNet class (shared shrunk covariance)."""

    def __init__(self, feats: np.ndarray, labels: np.ndarray) -> None:
        self.means = np.stack([feats[labels == c].mean(0) for c in np.unique(labels)])
        centred = np.concatenate([feats[labels == c] - m for c, m in enumerate(self.means)])
        self.reference = fit_reference(centred)

    def __call__(self, feats: np.ndarray) -> float:
        d = np.stack([self.reference.distance(feats - m + self.reference.mean) for m in self.means])
        return float(np.median(d.min(0)))


def run(args) -> None:
    ckpt = load_checkpoint(args.model or bundled_model_path())
    base = ckpt.build()
    layers = adapted_layers(base, ckpt.arch, None)
    index = {c: i for i, c in enumerate(ckpt.classes)}
    # The photos reference_tensors draws (TrashNet training photos no setting adapts on).
    tn_train = [r for r in split_lines("train.txt") if r[1] == "trashnet"]
    adapt_half = {r[2] for r in capped(tn_train)}
    ref = capped([r for r in tn_train if r[2] not in adapt_half], 1)
    ref_y = np.array([index[r[0]] for r in ref])
    distance = FeatureDistance(pooled_features(base, ckpt.arch, reference_tensors(ckpt)), ref_y)
    only = set(args.only.split(",")) if args.only else None
    temperature = float(ckpt.calibration["temperature"])
    data = (test_settings if args.test else settings)(ckpt, only)
    rows, summary = [], []
    for name, (a_x, t_x, t_y, *_) in data.items():
        t0 = time.perf_counter()
        stats = setting_statistics(base, layers, a_x)
        candidates = [
            ("shipped", (0.0, None), stats),
            ("AdaBN, all layers", (1.0, None), stats),
            ("AdaBN, stem + 2 blocks", (1.0, 2), stats),
            ("blend 0.5, all layers", (0.5, None), stats),
        ]
        candidates += [
            (f"sequential blend {a:g}", (1.0, None), sequential_blend(base, layers, a_x, a))
            for a in (0.5, 0.25)
        ]
        if args.test:  # the two a rule without labels chooses between
            candidates = candidates[:2]
        share = float((shift_scores(base, ckpt.arch, ckpt.familiarity, a_x)[1] > 1).mean())
        rule = adapt_model(ckpt, Photos(unlabelled=a_x), statistics=stats)
        rule_acc = scores(rule.model, t_x, t_y, rule.calibration)[0]
        kept = "kept shipped" if rule.choice["alpha"] == 0 else "adapted"
        results = []
        for method, fixed, statistics in candidates:
            adapted = adapt_model(ckpt, Photos(unlabelled=a_x), fixed=fixed, statistics=statistics)
            model = adapted.model
            acc, sure, acc_sure = scores(model, t_x, t_y, adapted.calibration)
            crit = {
                "feature distance": distance(pooled_features(model, ckpt.arch, a_x)),
                "information": information(logits_of(model, a_x).numpy(), temperature),
                "style shift": float(
                    np.median(shift_scores(model, ckpt.arch, ckpt.familiarity, a_x)[1])
                ),
            }
            results.append((method, acc, crit))
            print(f"  {name} {method}: {acc:.3f} {crit}", file=sys.stderr)
        base_acc = results[0][1]
        best = max(r[1] for r in results)
        picks = {}
        for criterion in CRITERIA:
            value = BETTER[criterion](r[2][criterion] for r in results)
            picks[criterion] = next(r for r in results if r[2][criterion] == value)[0]
        for method, acc, crit in results:
            marks = [c for c in CRITERIA if picks[c] == method]
            rows.append(
                [
                    name,
                    method,
                    f"{acc:.3f}",
                    f"{acc - base_acc:+.3f}",
                    *(f"{crit[c]:.3f}" for c in CRITERIA),
                    ", ".join(marks),
                ]
            )
        acc_of = {r[0]: r[1] for r in results}
        summary.append(
            [
                name,
                f"{len(a_x)} / {len(t_x)}",
                f"{share:.0%}",
                f"{base_acc:.3f}",
                f"{best - base_acc:+.3f}",
                f"{acc_of['AdaBN, all layers'] - base_acc:+.3f}",
                *(f"{acc_of[picks[c]] - base_acc:+.3f} ({picks[c]})" for c in CRITERIA),
                f"{rule_acc - base_acc:+.3f} ({kept})",
            ]
        )
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(machine_line())
    print(f"\n`{command_line()}`\n")
    print(
        table(
            ["setting", "method", "accuracy", "change", *CRITERIA, "chosen by"],
            rows,
        )
    )
    print()
    print(
        table(
            [
                "setting",
                "photos",
                "unfamiliar",
                "shipped",
                "best candidate",
                "AdaBN, all layers",
                *CRITERIA,
                "adapt without labels",
            ],
            summary,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="base checkpoint (default: the bundled model)")
    parser.add_argument("--only", help="comma-separated settings to run")
    parser.add_argument(
        "--test",
        action="store_true",
        help="the settings no rule was chosen on, shipped against AdaBN of every layer only",
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
