"""``python -m avatar_core reconstruct PHOTO -o OUT.avatar``: photo -> avatar file + preview sheet.

Prints the source-view PSNR (masked, per LOD) and the landmark error, and writes
``OUT.preview.png`` beside the avatar: source | LOD 0 | LOD 1 | LOD 2 over split layers |
soft masks | yaw -30 | yaw +30. Nothing is written when the command fails or is interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import suppress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photo", help="the portrait photo (JPEG, PNG, ...)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.avatar", help="the avatar file to write")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to optimise (default: cuda when available)")
    # "test" (tiny, for the test suite) is accepted but not advertised
    parser.add_argument("--quality", default="default", choices=("fast", "default", "best", "test"),
                        metavar="{fast,default,best}", help="speed/fidelity trade-off (default: default)")
    parser.add_argument("--head", default="open", metavar="open|PATH",
                        help="head model: the built-in open head or a FLAME file (default: open)")
    parser.add_argument("--face-index", type=int, default=None, metavar="N",
                        help="which face when the photo has several, by size (0 = largest, the default)")
    parser.add_argument("--no-preview", action="store_true", help="do not write OUT.preview.png")
    parser.add_argument("--method", default="optimise", choices=("optimise", "feedforward"),
                        help="optimise (default, needs no weights) or feedforward (needs --checkpoint)")
    parser.add_argument("--checkpoint", default=None, metavar="CKPT",
                        help="feed-forward checkpoint: a model file, step folder or run folder from `train`")


def run(args) -> int:
    from avatar_core.atomic import atomic_paths, check_output
    from avatar_core.cli.progress_bar import ProgressBar
    from avatar_core.devices import resolve_device
    from avatar_core.recon import reconstruct
    from avatar_core.recon.pipeline import check_output_path
    from avatar_core.recon.preview import preview_path, preview_sheet

    from avatar_core.errors import CheckpointError
    if args.method == "feedforward" and not args.checkpoint:
        raise CheckpointError("--method feedforward needs --checkpoint CKPT (a model trained with `train`).")
    device = resolve_device(args.device)
    preview = None if args.no_preview else preview_path(args.output)
    # fail before the work, not after it
    inputs = [args.photo, args.checkpoint, args.head]
    check_output(args.output, inputs, "avatar file")
    check_output_path(args.output)
    if preview is not None:
        check_output(preview, inputs, "preview image")
    bar = ProgressBar("reconstruct")
    try:
        if args.method == "feedforward":
            avatar, source_image, summary, warnings = _feedforward(args, device, bar)
        else:
            avatar, report = reconstruct(args.photo, out_path=None, head=args.head, quality=args.quality,
                                         device=device, face_index=args.face_index, progress=bar)
            source_image, summary, warnings = report.source_image, report.summary(), report.warnings
        if preview is not None:
            bar(0.98, "rendering the preview")
            sheet = preview_sheet(avatar, source_image, device=device)
        from avatar_core.io.avatar_file import write_avatar
        # the avatar and its preview are published together, only when both are written; a
        # failure leaves the previous pair as it was
        targets = [(args.output, "avatar file")] + ([(preview, "preview image")] if preview is not None else [])
        with atomic_paths(targets) as tmps:
            write_avatar(avatar, tmps[0], name=args.output)
            if preview is not None:
                tmps[1].write_bytes(_png_bytes(sheet))
        stale = preview_path(args.output)
        if preview is None and stale.is_file():
            with suppress(OSError):  # the old preview shows the old avatar
                os.unlink(stale)
    except BaseException:
        bar.close()  # end the progress line, so the error sentence starts a line of its own
        raise
    bar(1.0, "done")
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(summary)
    print(f"wrote {args.output}" + (f" and {preview}" if preview is not None else ""))
    return 0


def _png_bytes(image) -> bytes:
    import cv2
    import numpy as np
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        from avatar_core.errors import AvatarError
        raise AvatarError("Could not encode the preview image as PNG.")
    return buf.tobytes()


def _feedforward(args, device, bar):
    """Face crop + single-image fit + the trained network (no per-photo optimisation)."""
    import time
    from avatar_core.face import process_portrait
    from avatar_core.fit.correspondence import landmark_embedding
    from avatar_core.fit.single import fit_portrait
    from avatar_core.head import load_head
    from avatar_core.recon.feedforward import reconstruct_feedforward
    t0 = time.perf_counter()
    head = load_head(args.head)
    portrait = process_portrait(args.photo, size=512, face_index=args.face_index, progress=bar)
    fit = fit_portrait(head, portrait, landmark_embedding(head))
    avatar = reconstruct_feedforward(portrait, fit, args.checkpoint, head=head, device=device)
    summary = (f"feed-forward reconstruction in {time.perf_counter() - t0:.1f} s (network "
               f"{avatar.info.get('seconds', 0.0):.3f} s); landmark median error {fit.median_error_px:.2f} px "
               f"({100 * fit.median_error_frac:.2f}% of the face box)")
    return avatar, portrait.image, summary, list(portrait.warnings)
