"""``python -m avatar_core <command> ...``: the HeadSplat command line.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs, so ``--help`` is instant.
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = "error: interrupted; no output was written."


def _on_sigint(signum, frame):  # pragma: no cover - timing dependent
    """Ctrl-C: KeyboardInterrupt (atomic writers clean up, main prints the line), except inside an
    import, where an exception would leave half-initialised modules (numpy, torch) raising other
    errors: there the live temporaries are removed, the one line printed, and the process ends."""
    f = frame
    while f is not None:
        if f.f_code.co_filename.startswith("<frozen importlib"):
            atomic = sys.modules.get("avatar_core.atomic")
            if atomic is not None:
                atomic.remove_live_temporaries()
            os.write(2, (INTERRUPTED + "\n").encode())
            os._exit(130)
        f = f.f_back
    raise KeyboardInterrupt


if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _on_sigint)

import argparse  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402

# (command words) -> (module, one-line help)
COMMANDS = {
    ("fetch-models",): ("avatar_core.cli.fetch_models", "set up the face models (from the mediapipe 0.10.21 wheel) once"),
    ("head", "info"): ("avatar_core.cli.head_info", "print a head model's sizes per LOD, expressions and joints"),
    ("head", "preview"): ("avatar_core.cli.head_preview", "render a picture of the head at each LOD and a few expressions"),
    ("reconstruct",): ("avatar_core.cli.reconstruct", "photo -> avatar file (+ preview sheet)"),
    ("track",): ("avatar_core.cli.track", "video -> motion file (per-frame expression and pose)"),
    ("animate",): ("avatar_core.cli.animate", "render an avatar driven by a motion to a video or frames"),
    ("render",): ("avatar_core.cli.render", "a still of an avatar at its source camera, turned, with expressions"),
    ("export",): ("avatar_core.cli.export", "write an avatar's Gaussians as PLY, glTF (KHR_gaussian_splatting) "
                                            "or SPZ: one frame, or a motion as a sequence"),
    ("export-ply",): ("avatar_core.cli.export", "the old name of export (same options)"),
    ("bench", "render"): ("avatar_core.cli.bench_render", "time the per-frame render path (FPS per LOD)"),
    ("bench", "export"): ("avatar_core.cli.bench_export", "time a motion exported as a PLY/GLB/SPZ sequence"),
    ("bench", "face"): ("avatar_core.cli.bench_face", "the torch face models against mediapipe 0.10.21 (parity, speed) as JSON"),
    ("bench", "recon"): ("avatar_core.cli.bench_recon", "time photo -> avatar file, stage by stage"),
    ("eval", "selfreenact"): ("avatar_core.cli.eval_selfreenact", "self-reenactment report on video clips"),
    ("eval", "expressions"): ("avatar_core.cli.eval_expressions", "mouth interior, blink and gaze figures of avatars (JSON)"),
    ("eval", "sideviews"): ("avatar_core.cli.eval_sideviews", "notch and speckle figures of avatars turned both ways (JSON)"),
    ("eval", "novelview"): ("avatar_core.cli.eval_novelview", "novel-view report on the head scan"),
    ("train",): ("avatar_core.cli.train", "train the feed-forward reconstructor (torchrun for DDP)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m avatar_core", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {}
    for words, (module, help_text) in COMMANDS.items():
        if len(words) == 1:
            p = sub.add_parser(words[0], help=help_text)
        else:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            p = groups[words[0]].add_parser(words[1], help=help_text)
        p.set_defaults(_module=module, _words=words)
    return parser


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # parse the command words first, then let the command's module add its own options
    wants_help = any(a in ("-h", "--help") for a in argv)
    known, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    module_name = getattr(known, "_module", None)
    if module_name is None:
        if wants_help or not argv:
            parser.print_help()
            return 0 if wants_help else 2
        parser.parse_args(argv)  # reports the unknown command
        return 2
    module = importlib.import_module(module_name)
    words = known._words
    cmd_parser = argparse.ArgumentParser(prog="python -m avatar_core " + " ".join(words),
                                         description=COMMANDS[words][1])
    cmd_parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    module.add_arguments(cmd_parser)
    rest = [a for a in argv]
    for w in words:  # drop the command words themselves
        rest.remove(w)
    args = cmd_parser.parse_args(rest)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from avatar_core.errors import AvatarError
    try:
        return int(module.run(args) or 0)
    except AvatarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno is None:
            raise
        # an environment fault (disk full, read-only folder, I/O error) no reader turned into a sentence
        where = f" ({exc.filename!r})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; the previous outputs were left as they were.", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory; try a lower --res, --lod or --batch.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
