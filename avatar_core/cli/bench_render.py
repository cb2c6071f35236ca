"""``python -m avatar_core bench render``: time the per-frame path a viewer runs.

For each LOD and refiner setting: expression/pose parameters -> ``Avatar.animate`` -> rasterise
-> refine -> RGB, all on the device, the parameters changed every frame, warm-up excluded;
prints frames per second (``avatar_core.eval.bench_render`` measures). With ``--backward``
(default on the CPU) it also times forward + backward of rasterise (+ refine).
"""

from __future__ import annotations

import json
import math
import os


def add_arguments(parser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="device to run on (default: cuda if available, else cpu)")
    parser.add_argument("--lod", default="0,1,2", help="comma-separated LODs (default 0,1,2)")
    parser.add_argument("--res", type=int, default=512, help="square image size in pixels (default 512)")
    parser.add_argument("--refiner", choices=("on", "off", "both"), default="both",
                        help="refiner setting(s) to time (default both)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--frames", type=int, default=None, help="timed frames per setting (default: cuda 1000, cpu 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed frames first (default: cuda 50, cpu 1)")
    parser.add_argument("--head", default="open", help='head model: "open" (built-in), "test" (analytic), or a FLAME file')
    parser.add_argument("--channels", type=int, default=32, help="feature channels of the avatar (default 32)")
    parser.add_argument("--backward", choices=("on", "off"), default=None,
                        help="also time forward+backward (default: on for cpu, off for cuda)")
    parser.add_argument("--cuda-graph", choices=("auto", "full", "render", "none"), default="auto",
                        help="CUDA graph capture of the frame (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--compile", choices=("on", "off"), default=None,
                        help="CUDA: torch.compile animate and the tile binning (default on for cuda)")


def run(args) -> int:
    import torch

    from avatar_core.cli.progress_bar import ProgressBar
    from avatar_core.devices import resolve_device
    from avatar_core.errors import ParameterError
    from avatar_core.eval.bench_render import format_table, run_bench

    device = resolve_device(args.device or "auto")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        lods = [int(x) for x in str(args.lod).split(",") if x.strip() != ""]
    except ValueError:
        raise ParameterError(f"--lod must be comma-separated integers such as 0,1,2; got {args.lod!r}.") from None
    if args.res < 16 or args.res > 4096:
        raise ParameterError(f"--res must be between 16 and 4096 pixels; got {args.res}.")
    settings = {"on": [True], "off": [False], "both": [False, True]}[args.refiner]
    cuda = device == "cuda"
    frames = args.frames or (1000 if cuda else 5)
    warmup = args.warmup if args.warmup is not None else (50 if cuda else 1)
    backward = (args.backward or ("off" if cuda else "on")) == "on"
    compile_ = (args.compile or ("on" if cuda else "off")) == "on"

    bar = ProgressBar("bench render")
    result = run_bench(device, lods, args.res, settings, frames, warmup, head_spec=args.head,
                       channels=args.channels, backward=backward, cuda_graph=args.cuda_graph, compile=compile_,
                       progress=bar)
    print(format_table(result))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2, default=lambda o: o if not isinstance(o, float) or math.isfinite(o) else None)
        os.replace(tmp, args.json)
    return 0
