"""Scores any model checkpoint this repository writes (A, B, C and their copies, EAT, the generator
study's co-trained models, and the snapshots <model>.iter<N>.pt that keep_every keeps; the JSON names
the iteration scored) on a data set's test images: clean, FGS and PGD (white box), and with
--strong-eval the strong evaluation of the data-set scripts (the same code path: PGD-100x5, PGD-CW,
AutoAttack's cascade and attacks, the checkpoint's own generator where it has one, masking checks), or
with --autoattack AutoAttack's standard cascade alone (the number to quote, without the rest).
Writes a results JSON with provenance; --robustbench also writes RobustBench's model_info JSON.

    python evaluate.py checkpoints/cifar10/C.pt --dataset cifar10 --strong-eval
    python evaluate.py checkpoints/cifar10/C.pt --dataset cifar10 --autoattack --set strong_n=0
    python evaluate.py checkpoints/mnist/B.pt --dataset mnist --eval-n 1000 --bn-eval batch
    python evaluate.py checkpoints/cifar10/C.pt --dataset cifar10 --robustbench

The network, eps and PGD settings are those the checkpoint was trained with (its fingerprint), and so is
the protocol: a checkpoint trained with --protocol authors is scored as the authors scored (batch norm's
batch statistics, batches of 64, their number of test images) unless --eval-n, --bn-eval or --set say
otherwise; --protocol, if given, must be the checkpoint's. --set changes only the scoring settings (e.g.
--set strong_n=0 for every scored image), and refuses the training ones.
"""
import argparse
import copy
import json
import os
import time

import cifar10
import cifar100
import core
import generators_study
import mnist
import runner.autoattack_suite
import runner.checkpoints
import runner.cli
import runner.errors
import runner.evaluation
import runner.files
import runner.provenance
import runner.reports
import runner.settings
import svhn

DATASETS = {  # name -> (script that built the networks, args -> test (images, labels), paper table, authors' settings)
    "mnist": (mnist, lambda args: mnist.load_data(args.data_dir, False)[2:], "mnist", mnist.AUTHORS),
    "fashion_mnist": (mnist, lambda args: mnist.load_data(args.data_dir, True)[2:], None, mnist.FASHION_AUTHORS),
    "svhn": (svhn, lambda args: svhn.load_data(args.data_dir, 0, 0)[2:], "svhn", svhn.AUTHORS),
    "cifar10": (cifar10, lambda args: cifar10.load_data(args.data_dir)[2:], "cifar10", cifar10.AUTHORS),
    "cifar100": (cifar100, lambda args: cifar100.load_data(args.data_dir)[2:], "cifar100", cifar100.AUTHORS),
}
# the paper as model_info's reference; the link is left for whoever submits (the paper text here carries none)
PAPER = dict(name="A Direct Approach to Robust Deep Learning Using Adversarial Networks", authors="Wang, Yu",
             venue="ICLR 2019", link="")
PAPER_ROWS = {"standard": "A", "pgd": "B", "advnet": "C", "eat": "EAT"}  # method -> the paper's row of its tables
# what --set may change here: how the checkpoint is scored, never what it was trained with (eps, PGD, networks)
SCORING_SETTINGS = {"test_n", "eval_batch", "bn_eval", "strong_n", "strong_steps", "strong_restarts", "square_queries"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .pt checkpoint written by mnist.py, svhn.py, cifar10.py, cifar100.py, "
                   "ensemble.py or generators_study.py")
    p.add_argument("--dataset", required=True, choices=list(DATASETS), help="the data set it was trained on")
    p.add_argument("--gpu", default=None, help="CUDA device index or cpu (default: GPU 0 if present, else cpu)")
    p.add_argument("--data-dir", default="data", help="where torchvision finds or downloads the data set")
    p.add_argument("--out", default=None, help="results JSON (default: results/evaluate_<dataset>_<checkpoint name>.json)")
    p.add_argument("--eval-n", type=int, default=None, help="score only the first N test images (setting test_n; 0 = all)")
    p.add_argument("--bn-eval", choices=core.BN_MODES, default=None, help="batch norm when scoring (default running)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scoring setting (repeatable): "
                   f"{', '.join(sorted(SCORING_SETTINGS))}")
    p.add_argument("--protocol", choices=runner.settings.PROTOCOLS, default=None, help="the checkpoint's protocol (read from "
                   "its fingerprint; given, it must agree)")
    p.add_argument("--strong-eval", action="store_true", help="also run the strong evaluation")
    p.add_argument("--autoattack", action="store_true", help="also run AutoAttack's standard cascade alone on the "
                   "first strong_n images, without the rest of the strong evaluation (which runs it too); its state, "
                   "kept beside the checkpoint, is read back by a later --strong-eval, here or in the scripts")
    p.add_argument("--robustbench", action="store_true", help="also write RobustBench's model_info JSON (runs the "
                   "strong evaluation for AutoAttack's number)")
    args = runner.cli.parse_cli(p, argv, __file__)
    if args.autoattack and (args.strong_eval or args.robustbench):
        raise runner.errors.UserError(f"{'--strong-eval' if args.strong_eval else '--robustbench'} runs AutoAttack's "
                                      "cascade too: drop --autoattack")
    return scoring_command(args)


def scoring_command(args, **lacking):
    """`args` as resolve_settings reads a command's: a command that scores a checkpoint trains nothing (no
    --quick, the checkpoint's own iterations and seed), and each option it lacks (`lacking`: name -> value)
    takes the value that changes no setting."""
    args.quick, args.iters, args.seed = False, None, None
    for name, value in lacking.items():
        setattr(args, name, value)
    return args


AUTOATTACK_STATE = "the checkpoint's folder (the strong evaluation keeps its state there, to resume)"


def load(path, dataset):
    """(checkpoint, its training settings, method, seed) from a checkpoint's fingerprint; one of another
    data set than `dataset` (as the checkpoint records it: older ones do not) is a UserError."""
    if not os.path.exists(path):
        raise runner.errors.UserError(f"checkpoint {path} does not exist")
    ckpt = runner.checkpoints.read_checkpoint(path, dataset)
    trained = json.loads(ckpt["fingerprint"])
    method, seed = trained.pop("method"), trained.pop("model_seed")
    if method == "generator":
        raise runner.errors.UserError(f"{path} holds a generator trained against a fixed model, not a classifier to score")
    return ckpt, trained, method, seed


def check_classes(D, test_x, test_y, args, device):
    """That D has an output for every test label: a checkpoint too old to name its data set may be of another."""
    with core.scoring_mode([D]):
        outputs = D(core.to_float(test_x[:1].to(device))).shape[1]
    if test_y.max().item() >= outputs:
        raise runner.errors.UserError(f"{args.checkpoint} scores {outputs} classes, but {args.dataset}'s test labels reach "
                                   f"{test_y.max().item()}: is --dataset right?")


def build(script, settings, ckpt, path, device):
    """D (and G, for the methods that train one) with the checkpoint's weights, in eval mode."""
    build_G = generators_study.GENERATORS[settings["generator"]] if "generator" in settings else script.build_G
    D, G = core.to_device(script.build_D(settings), device), core.to_device(build_G(settings), device)
    modules = {"D": D, "G": G} if "G" in ckpt else {"D": D}
    try:
        for key, module in modules.items():
            module.load_state_dict(ckpt[key])
    except (KeyError, RuntimeError) as err:
        raise runner.errors.UserError(f"checkpoint {path} does not match {script.__name__}'s networks "
                                   f"({runner.errors.failure(err)}); is --dataset right?") from None
    return D.eval(), G.eval() if "G" in ckpt else None


def trained_settings(script, authors, trained, method, args, scoring=None):
    """The settings a checkpoint is scored with: its script's, under the protocol of its fingerprint (which
    leaves out the paper's), the fingerprint's own values over them, `scoring` over those, then this command's."""
    unknown = sorted(set(trained) - known_settings(script))
    if unknown:
        raise runner.errors.UserError(f"{args.checkpoint} was trained with settings this version does not know "
                                      f"({', '.join(unknown)}): it comes from another version of this repository; "
                                      "score it with that version")
    protocol = trained.get("protocol", "paper")
    if getattr(args, "protocol", None) not in (None, protocol):
        raise runner.errors.UserError(f"{args.checkpoint} was trained under the {protocol} protocol, not {args.protocol}: "
                                   f"drop --protocol (the checkpoint says which)")
    args = copy.copy(args)
    args.protocol = protocol
    trained = runner.settings.unnamed_neutral(trained, method) | trained  # else the protocol's row would fill them in
    resolved = runner.settings.resolve_settings(script.SETTINGS, args, trained | {"dataset": args.dataset} | (scoring or {}),
                                           authors, SCORING_SETTINGS, "a training setting: a checkpoint is scored "
                                           "with the settings it was trained with")
    return runner.settings.model_settings(resolved, method)


def known_settings(script):
    """The settings a fingerprint of `script`'s models may name: its own, every protocol's, and the
    generator that generators_study.py trains C with."""
    s = runner.settings
    return {*script.SETTINGS, *s.COMMON_SETTINGS, *s.AUTHORS_SETTINGS, *s.NEUTRAL_SETTINGS, *s.SETTING_RANGES, "generator"}


def main(argv=None):
    args = parse_args(argv)
    script, load_test, paper_table, authors = DATASETS[args.dataset]
    ckpt, trained, method, seed = load(args.checkpoint, args.dataset)
    settings = trained_settings(script, authors, trained, method, args)
    device = runner.cli.pick_device(args.gpu)
    D, G = build(script, settings, ckpt, args.checkpoint, device)
    name = os.path.splitext(os.path.basename(args.checkpoint))[0] + ("_authors" if settings["protocol"] == "authors" else "")
    out = args.out or os.path.join("results", f"evaluate_{args.dataset}_{name}.json")
    lost = less_than(runner.files.check_results_file(out, "evaluate"), args, settings)
    if lost:
        raise runner.errors.UserError(f"{out} holds {'; '.join(lost)}, which this run would not write: pass another "
                                      "--out, or move the file away to replace it")
    state_dir = (os.path.dirname(os.path.abspath(args.checkpoint)) if args.strong_eval or args.robustbench or args.autoattack
                 else None)
    if state_dir:
        runner.files.check_writable(state_dir, AUTOATTACK_STATE)
        runner.evaluation.strong_chunk(settings)  # --autoattack too: a script's --strong-eval must accept its state
    if args.robustbench:
        runner.files.check_out_file(model_info_path(out))
        check_model_info(model_info_path(out))
    test_x, test_y = load_test(args)
    check_classes(D, test_x, test_y, args, device)
    started = time.time()
    record = ckpt["record"]
    print(f"scoring {args.checkpoint}: iteration {record['iters_done']} of {settings['iters']}"
          + (" (unfinished, or a kept snapshot)" if record["iters_done"] < settings["iters"] else ""))
    report = {"experiment": "evaluate", "checkpoint": os.path.abspath(args.checkpoint), "dataset": args.dataset,
              "protocol": settings["protocol"], "method": method, "seed": seed, "iteration": record["iters_done"],
              "trained_settings": trained, "settings": settings,
              "model": {k: v for k, v in record.items() if k != "history"},
              "provenance": runner.provenance.provenance(device, runner.provenance.command_line(args), settings["precision"]),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    report["table"], report["eval"] = runner.evaluation.evaluate_trained({"model": D}, settings, test_x, test_y, device, state_dir)
    print(runner.reports.table_caption(report["eval"]["n_test"], settings["eps"], settings["protocol"], settings["bn_eval"]))
    print(runner.reports.format_table(report["table"]))
    if args.strong_eval or args.robustbench:
        report["strong_eval"] = runner.evaluation.strong_eval_report({"model": D}, G, settings, test_x, test_y, device,
                                                              runner.autoattack_suite, state_dir)
    if args.autoattack:
        report["autoattack"] = autoattack_alone(D, settings, test_x, test_y, device, state_dir)
    report |= {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": round(time.time() - started, 1)}
    runner.files.write_json(out, report)
    print(f"results written to {out}")
    if args.robustbench:
        info_path = model_info_path(out)
        runner.files.write_json(info_path, model_info(report, D, paper_table))
        print(f"RobustBench model_info written to {info_path}")
    return report


def less_than(earlier, args, settings):
    """What the earlier results file (parsed, or None) holds that this command would not write, as short
    phrases: scores on more test images, a strong evaluation, AutoAttack's cascade."""
    if earlier is None:
        return []
    lost, n, strong = [], settings["test_n"], args.strong_eval or args.robustbench
    if n and earlier.get("eval", {}).get("n_test", 0) > n:
        lost.append(f"scores on more than {n} test images")
    if "strong_eval" in earlier and not strong:
        lost.append("a strong evaluation (add --strong-eval)")
    if "autoattack" in earlier and not (strong or args.autoattack):
        lost.append("AutoAttack's cascade (add --autoattack)")
    return lost


def autoattack_alone(D, settings, test_x, test_y, device, state_dir):
    """--autoattack: AutoAttack's standard cascade on the images the strong evaluation scores, resumed from
    and kept in the state file that the strong evaluation of the same model and settings reads."""
    n, t0 = runner.evaluation.strong_images(settings, len(test_x)), time.time()
    accuracy, warnings = runner.evaluation.autoattack_cascade(runner.autoattack_suite, D, test_x[:n], test_y[:n], settings,
                                                              device, state_dir)
    print(f"AutoAttack's cascade, first {n} test images, BN {settings['bn_eval']}: {accuracy:.2f} % accuracy")
    print("\n".join(f"AutoAttack's warning: {w}" for w in warnings) or "AutoAttack's checks: no warning")
    return {"n_test": n, "bn": settings["bn_eval"], "version": runner.evaluation.autoattack_version(settings),
            "accuracy": accuracy, "warnings": warnings, "seconds": round(time.time() - t0, 1)}


def fraction(eps):
    """eps as RobustBench writes it: "8/255" where it is a whole number of 255ths (or 256ths, the paper's), else decimal."""
    for denominator in (255, 256):
        if abs(eps * denominator - round(eps * denominator)) < 1e-9:
            return f"{round(eps * denominator)}/{denominator}"
    return f"{eps:g}"


def model_info_path(out):
    return os.path.splitext(out)[0] + "_model_info.json"


def check_model_info(path):
    """That a model_info file --robustbench would write over is one it wrote (or absent): a user's own file
    there is a UserError before any scoring, never overwritten."""
    earlier = runner.files.read_results(path)
    if earlier is not None and not (isinstance(earlier, dict) and {"threat_model", "autoattack_acc"} <= set(earlier)):
        raise runner.errors.UserError(f"{path} is not a RobustBench model_info file that --robustbench wrote; move it "
                                      "away, or pass another --out")


def model_info(report, D, paper_table):
    """RobustBench's model_info entry (model_info/<dataset>/Linf/<name>.json) of an evaluated model."""
    strong, settings = report["strong_eval"], report["settings"]
    accuracy = strong["models"]["model"]["accuracy"]
    row = PAPER_ROWS.get(report["method"])
    paper = runner.reports.paper_rows(paper_table) if paper_table else None
    notes = [f"AutoAttack {strong['autoattack']['version']}, batch norm {strong['bn']}, on the first {strong['n_test']} "
             f"test images; clean accuracy on the same images",
             f"trained under the {report['protocol']} protocol"
             + (f" (the settings of the authors' code: {settings['protocol_source']})" if report["protocol"] == "authors"
                else " (the settings of the paper's text)")
             + (f"; its eps grew over its first {settings['pgd_warmup_iters']} steps"
                if report["method"] == "pgd" and settings.get("pgd_warmup_iters") else "")]
    if strong["models"]["model"]["autoattack_warnings"]:
        notes.append("AutoAttack warned: " + " | ".join(strong["models"]["model"]["autoattack_warnings"]))
    return PAPER | {
        "additional_data": False,
        "number_forward_passes": 1, "dataset": report["dataset"], "threat_model": "Linf",
        "architecture": f"{type(D).__name__}: {(type(D).__doc__ or '').splitlines()[0]}",
        "eps": fraction(settings["eps"]), "clean_acc": f"{accuracy['clean']:.2f}",
        "reported": f"{paper[row][2]:.2f}" if paper and row in paper else "",  # the paper's PGD, its strongest attack
        "autoattack_acc": f"{accuracy['autoattack']:.2f}", "footnote": "; ".join(notes),
        "unreliable": any(c["flag"] for c in strong["models"]["model"]["checks"].values()),
    }


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
