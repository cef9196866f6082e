"""tools/first_layer.py: which first-layer filters of MNIST's network read one pixel, and where they switch."""
import json

import pytest
import torch

import core
import first_layer
import runner.errors
from test_mnist_script import quick_run  # noqa: F401 (the session's quick models)

ON_ABOVE, ON_BELOW, SPREAD_OUT = 0, 1, 2  # the filters of the network below


def thresholding_network(input_scale=1.0):
    """D1 whose filter 0 reads pixel (2, 2), on above 0.3, with two small weights of opposite signs in its patch; filter 1
    reads pixel (1, 3), on below 0.69; filter 2 spreads its weight over the whole patch."""
    D = core.D1(input_scale=input_scale)
    with torch.no_grad():
        D.conv1.weight.zero_()
        D.conv1.bias.zero_()
        D.conv1.weight[ON_ABOVE, 0, 2, 2], D.conv1.weight[ON_ABOVE, 0, 0, 0], D.conv1.weight[ON_ABOVE, 0, 4, 4] = 2.0, 0.1, -0.1
        D.conv1.bias[ON_ABOVE] = 0.8
        D.conv1.weight[ON_BELOW, 0, 1, 3], D.conv1.bias[ON_BELOW] = -1.5, 0.57
        D.conv1.weight[SPREAD_OUT].fill_(0.1)
    return D


def unit(D, f, place, value, rest):
    """Filter f's pre-activation at the centre of an image whose pixel `place` of the patch is `value`
    and whose other pixels are `rest`: one value, or {place: value} over a blank image."""
    blank = isinstance(rest, dict)
    x = torch.full((1, 1, 28, 28), 0.0 if blank else rest)
    pixels = (dict(rest) if blank else {}) | {place: value}
    for (row, column), v in pixels.items():
        x[0, 0, 12 + row, 12 + column] = v  # the patch of the centre pixel (14, 14), padding 2
    return D.conv1(core.signed(x, D.input_scale))[0, f, 14, 14].item()


def crossing(D, f, place, rest):
    "Where the unit's pre-activation changes sign as the pixel goes from 0 to 1 (a fine grid)."
    values = torch.linspace(0, 1, 10001)
    signs = [unit(D, f, place, v.item(), rest) > 0 for v in values[::100]]
    k = next(i for i in range(1, len(signs)) if signs[i] != signs[i - 1])
    fine = [v.item() for v in values[(k - 1) * 100:k * 100 + 1]]
    return next(v for a, v in zip(fine, fine[1:]) if (unit(D, f, place, a, rest) > 0) != (unit(D, f, place, v, rest) > 0))


@pytest.mark.parametrize("input_scale", [1.0, 255 / 256])
def test_the_switch_is_where_the_unit_changes_sign_within_its_spread(input_scale):
    D = thresholding_network(input_scale)
    rows = first_layer.filters(D.conv1, input_scale)
    above, below = rows[ON_ABOVE], rows[ON_BELOW]
    assert above["pixel"] == [0, 2, 2] and above["on"] == "above" and below["on"] == "below"
    # filter 1 reads one pixel alone: the unit changes sign at the switch, whatever the other pixels hold
    for rest in (0.0, 1.0):
        assert crossing(D, ON_BELOW, (1, 3), rest) == pytest.approx(below["switch"], abs=2e-4)
    assert below["spread"] == 0
    # filter 0's other weights move the switch by at most its spread, and its two extremes move it that far:
    # the weight of +0.1 reading a blank pixel and the one of -0.1 an inked one, or the other way round
    assert above["spread"] == pytest.approx(0.2 / (2 * input_scale * 2.0), abs=1e-4)
    for rest in (0.0, 1.0, 0.5, {(0, 0): 0.0, (4, 4): 1.0}, {(0, 0): 1.0, (4, 4): 0.0}):
        moved = abs(crossing(D, ON_ABOVE, (2, 2), rest) - above["switch"])
        assert moved <= above["spread"] + 2e-4
        if input_scale == 1.0 and isinstance(rest, dict):
            assert moved == pytest.approx(above["spread"], abs=2e-4)
    assert unit(D, ON_ABOVE, (2, 2), above["switch"] + 0.05, 0.5) > 0 > unit(D, ON_BELOW, (1, 3), below["switch"] + 0.05, 0.5)
    if input_scale == 1.0:
        assert (above["switch"], below["switch"]) == (pytest.approx(0.3), pytest.approx(0.69))


def test_a_filter_spread_over_its_patch_has_no_switch():
    D = thresholding_network()
    with torch.no_grad():
        D.conv1.weight[3, 0, 0, 0], D.conv1.weight[3, 0, 1, 1] = 0.89, 0.11  # just short of one pixel
    rows = first_layer.filters(D.conv1)
    assert rows[3]["share"] == pytest.approx(0.89) and "switch" not in rows[3]
    assert rows[SPREAD_OUT]["share"] == pytest.approx(1 / 25, abs=1e-4) and "switch" not in rows[SPREAD_OUT]
    summary = first_layer.summary(rows, 0.3)
    # the 28 filters left at zero read nothing: share 0
    assert {row["share"] for row in rows[4:]} == {0.0}
    assert summary["one_pixel"] == 2 and summary["filters"] == 32
    assert summary["switches_below_half"] == {"count": 1, "lowest": 0.3, "highest": 0.3}
    assert summary["switches_above_half"] == {"count": 1, "lowest": 0.69, "highest": 0.69}


def test_another_network_is_refused():
    with pytest.raises(runner.errors.UserError, match="MNIST's network"):
        first_layer.first_conv(torch.nn.Linear(2, 2), "x.pt")


@pytest.mark.slow
def test_the_file_names_its_checkpoint_and_is_kept_or_refused(quick_run, tmp_path, capsys):  # noqa: F811
    _, ckpt, _ = quick_run
    out = tmp_path / "first.json"
    report = first_layer.main([f"{ckpt}/B.pt", "--dataset", "mnist", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["filters"] == report["filters"] and len(written["filters"]) == 32
    assert written["fingerprint"] == core.load_checkpoint(f"{ckpt}/B.pt")["fingerprint"]
    stamp = out.stat().st_mtime_ns
    first_layer.main([f"{ckpt}/B.pt", "--dataset", "mnist", "--out", str(out)])
    assert out.stat().st_mtime_ns == stamp and "kept as it is" in capsys.readouterr().out
    edited = dict(written, filters=[written["filters"][0] | {"share": 0.95}] + written["filters"][1:])
    out.write_text(json.dumps(edited))
    with pytest.raises(runner.errors.UserError, match="other filters for this checkpoint"):
        first_layer.main([f"{ckpt}/B.pt", "--dataset", "mnist", "--out", str(out)])
    assert json.loads(out.read_text()) == edited
    out.write_text(json.dumps(written))
    with pytest.raises(runner.errors.UserError, match="another checkpoint"):
        first_layer.main([f"{ckpt}/A.pt", "--dataset", "mnist", "--out", str(out)])
    out.write_text(json.dumps({"experiment": "attack_gap"}))
    with pytest.raises(runner.errors.UserError, match="not a results file of first_layer.py"):
        first_layer.main([f"{ckpt}/B.pt", "--dataset", "mnist", "--out", str(out)])
    assert json.loads(out.read_text()) == {"experiment": "attack_gap"}


@pytest.mark.slow
def test_a_listing_cut_short_still_leaves_the_file(quick_run, tmp_path, monkeypatch):  # noqa: F811
    _, ckpt, _ = quick_run
    out = tmp_path / "first.json"

    def closed(*args, **kwargs):
        raise BrokenPipeError("standard output closed")
    monkeypatch.setattr("builtins.print", closed)
    with pytest.raises(BrokenPipeError):
        first_layer.main([f"{ckpt}/C.pt", "--dataset", "mnist", "--out", str(out)])
    assert len(json.loads(out.read_text())["filters"]) == 32
