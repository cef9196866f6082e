"""Does a classifier's first layer threshold its input? For the MNIST network (D1, which MNIST and
Fashion-MNIST checkpoints train), each filter of its first convolution: the share of its weights'
magnitude on its largest weight, and, for a filter that reads one pixel (a share of at least 0.9),
the pixel value at which its unit switches.

    python tools/first_layer.py checkpoints/mnist_authors/B.pt --dataset mnist

D1 reads a pixel x in [0, 1] as s = 2 x - 1 (core.signed), so a filter whose weight w on one pixel
dwarfs the rest computes about relu(w s + b): its unit is off on one side of x* = (1 - b / w) / 2 and
grows linearly on the other (above x* where w > 0). `switch` is that x*, where the unit switches when
the other pixels of its patch are mid-gray (s = 0); other values of them move it by at most `spread`
(the other weights' summed magnitude over 2 |w|, as |s| <= 1). A PGD-trained MNIST network is known to
learn such filters (Madry et al., 2018, appendix C). An input gradient sees a unit's switch only once
it is crossed, and a gradient-free attack needs no gradient. It reads the weights alone: no data, no
attack. The JSON (default results/first_layer/<dataset>_<checkpoint name>.json) holds every filter.
"""
import argparse
import os

import torch

import _root  # noqa: F401 (first: the repository's root on sys.path, for the imports below)
import core
import evaluate
import runner.cli
import runner.errors
import runner.files
import runner.provenance

ONE_PIXEL = 0.9  # share of a filter's weight magnitude on one weight, for it to count as reading one pixel
SAME = ["experiment", "fingerprint", "iteration"]          # what a file already at --out must share to be kept
FROM_WEIGHTS = ["one_pixel_share", "summary", "filters"]  # what the same weights give again


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a classifier's .pt checkpoint of MNIST's network (A, B, C, a snapshot)")
    p.add_argument("--dataset", required=True, choices=list(evaluate.DATASETS), help="the data set it was trained on")
    p.add_argument("--out", default=None, help="results JSON (default results/first_layer/<dataset>_<checkpoint name>.json)")
    args = runner.cli.parse_cli(p, argv, __file__)
    return evaluate.scoring_command(args, set=[], bn_eval=None, eval_n=None)


def filters(conv, input_scale=1.0):
    """Per filter of `conv` (reading core.signed(x, input_scale)): its largest weight's share of the
    filter's weight magnitude and that weight's place (channel, row, column); for a filter that reads one
    pixel (share >= ONE_PIXEL) also the pixel value where its unit switches, which side is on, and how far
    its other weights can move the switch, all in [0, 1] pixel units (docstring above)."""
    rows = []
    for f, (w, b) in enumerate(zip(conv.weight.detach().double(), conv.bias.detach().double())):
        magnitude = w.abs()
        place = [int(i) for i in torch.unravel_index(magnitude.argmax(), w.shape)]
        main = w[tuple(place)].item()
        total = magnitude.sum().item()
        share = abs(main) / total if total else 0.0  # all zero: it reads nothing
        row = {"filter": f, "share": round(share, 4), "pixel": place}
        if share >= ONE_PIXEL:
            scale = 2 * input_scale  # d s / d x
            reach = max(1.0, scale - 1)  # the largest |s| of a pixel in [0, 1]
            row |= {"switch": round((1 - b.item() / main) / scale, 4), "on": "above" if main > 0 else "below",
                    "spread": round((total - abs(main)) * reach / (scale * abs(main)), 4)}
        rows.append(row)
    return rows


def span(switches):
    "count, lowest and highest of sorted switches"
    return {"count": len(switches), "lowest": switches[0], "highest": switches[-1]} if switches else {"count": 0}


def summary(rows, eps):
    """The one-pixel filters, and their switches below and above 0.5, each as (count, lowest, highest)."""
    switches = sorted(r["switch"] for r in rows if "switch" in r)
    return {"filters": len(rows), "one_pixel": len(switches), "eps": eps,
            "switches_below_half": span([s for s in switches if s < 0.5]),
            "switches_above_half": span([s for s in switches if s >= 0.5])}


def first_conv(D, path):
    if not isinstance(D, core.D1):
        raise runner.errors.UserError(f"{path} holds a {type(D).__name__}; first_layer.py reads the first convolution of "
                                      "MNIST's network (D1), which MNIST and Fashion-MNIST checkpoints train")
    return D.conv1


def already_written(out, report):
    """Whether `out` already holds this checkpoint's filters (the same weights give the same file, so it is
    kept as it is); a file there of another checkpoint or tool is a UserError: written over, it would be lost."""
    earlier = runner.files.read_results(out)
    if earlier is None:
        return False
    if not isinstance(earlier, dict) or earlier.get("experiment") != "first_layer":
        raise runner.errors.UserError(f"{out} is not a results file of first_layer.py: pass another --out")
    differs = [key for key in SAME if earlier.get(key) != report[key]]
    if differs:
        raise runner.errors.UserError(f"{out} describes another checkpoint ({', '.join(differs)} differ): pass another --out")
    if [earlier.get(key) for key in FROM_WEIGHTS] != [report[key] for key in FROM_WEIGHTS]:
        raise runner.errors.UserError(f"{out} holds other filters for this checkpoint (edited, or written by another version "
                                      "of this tool): move it away, or pass another --out")
    return True


def main(argv=None):
    args = parse_args(argv)
    script, _, _, authors = evaluate.DATASETS[args.dataset]
    ckpt, trained, method, seed = evaluate.load(args.checkpoint, args.dataset)
    settings = evaluate.trained_settings(script, authors, trained, method, args)
    device = torch.device("cpu")  # the weights alone are read
    D, _ = evaluate.build(script, settings, ckpt, args.checkpoint, device)
    conv = first_conv(D, args.checkpoint)
    name = os.path.splitext(os.path.basename(args.checkpoint))[0]
    out = args.out or os.path.join("results", "first_layer", f"{args.dataset}_{name}.json")
    runner.files.check_out_file(out)
    rows = filters(conv, D.input_scale)
    report = {"experiment": "first_layer", "checkpoint": os.path.abspath(args.checkpoint), "dataset": args.dataset,
              "protocol": settings["protocol"], "method": method, "seed": seed, "fingerprint": ckpt["fingerprint"],
              "iteration": ckpt["record"]["iters_done"], "one_pixel_share": ONE_PIXEL,
              "summary": summary(rows, settings["eps"]), "filters": rows,
              "provenance": runner.provenance.provenance(device, runner.provenance.command_line(args), "float32")}
    kept = already_written(out, report)
    if not kept:
        runner.files.write_json(out, report)  # first: a listing cut short (| head) still leaves the file
    s = report["summary"]
    print(f"{name} (iteration {report['iteration']}, eps {s['eps']:g}): {s['one_pixel']} of {s['filters']} first-layer "
          f"filters read one pixel (share >= {ONE_PIXEL:g})")
    for r in sorted((r for r in rows if "switch" in r), key=lambda r: r["switch"]):
        print(f"  filter {r['filter']:3d}: on {r['on']} {r['switch']:.3f} (± {r['spread']:.3f}), share {r['share']:.2f}")
    print(f"{out} already held these filters: kept as it is" if kept else f"results written to {out}")
    return report


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
