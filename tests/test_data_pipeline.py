"""What the data pipeline promises, checked statistically: crop_flip's offsets are uniform over
0..2*pad and drawn apart for rows and columns, it flips about half of the images left-right whatever
their offsets; Batches gives a new permutation of the whole set in every epoch, and the same batches
after a resume. Seeds are fixed, so each test is deterministic; each bound holds for the correct code
with overwhelming probability (several standard deviations) and is far out of reach of the bug it
names."""
import torch

import core

CPU = torch.device("cpu")
PAD, SIZE, N_DRAWS = 4, 12, 18_000  # 9 offsets a side: 2000 draws per value, 222 per (row, column) pair


def coordinate_images(n, size=SIZE):
    """n copies of one image whose channel 0 holds (row + 1) / 16 and channel 1 (column + 1) / 16,
    exact in float32 and nonzero, so that a crop tells where it was cut and whether it was mirrored."""
    rows = (torch.arange(size, dtype=torch.float32) + 1) / 16
    image = torch.stack([rows[:, None].expand(size, size), rows[None, :].expand(size, size)])
    return image.expand(n, 2, size, size).contiguous()


def draws(seed=0):
    """crop_flip on N_DRAWS images: each one's row offset, column offset (0..2*PAD) and flip, read
    back from the crop. Output pixel (r, c) of an unmirrored crop is padded pixel (dy + r, dx + c),
    source pixel (dy + r - PAD, dx + c - PAD); a mirrored crop reads column dx + (SIZE - 1 - c) there."""
    torch.manual_seed(seed)
    out = core.crop_flip(coordinate_images(N_DRAWS), PAD)
    row_code, col_code = out[:, 0], out[:, 1]
    assert (row_code[:, PAD + 1, PAD] > row_code[:, PAD, PAD]).all(), "rows keep their order: flips are left-right"
    flipped = col_code[:, PAD, PAD + 1] < col_code[:, PAD, PAD]
    dy = (row_code[:, PAD, PAD] * 16).round().long() - 1
    dx = (torch.where(flipped, col_code[:, PAD, SIZE - 1 - PAD], col_code[:, PAD, PAD]) * 16).round().long() - 1
    return dy, dx, flipped


def chi_square(counts):
    counts = counts.double()
    expected = counts.sum() / counts.numel()
    return (((counts - expected) ** 2) / expected).sum().item()


def test_crop_offsets_are_uniform_over_every_shift_for_rows_and_columns_alike():
    """Chi-square with 8 degrees of freedom: mean 8, sd 4; 40 lies past p = 1e-5. A draw restricted
    to fewer shifts, or shifted by one, puts thousands of draws in the wrong cells."""
    dy, dx, _ = draws()
    for name, offsets in (("rows", dy), ("columns", dx)):
        assert offsets.min() >= 0 and offsets.max() <= 2 * PAD, name
        counts = torch.bincount(offsets, minlength=2 * PAD + 1)
        assert (counts > 0).all(), f"{name}: some shift is never drawn: {counts.tolist()}"
        assert chi_square(counts) < 40, f"{name}: offsets are not uniform: {counts.tolist()}"


def test_row_and_column_offsets_are_drawn_independently():
    """Chi-square of the 81 (row, column) pairs, 80 degrees of freedom: mean 80, sd 12.6; 160 is past
    p = 1e-9. One offset for both (diagonal crops) fills 9 cells only: chi-square 8 * 18000. The share
    of draws with equal offsets is 1/9 (sd 0.0023), not 1."""
    dy, dx = draws()[:2]
    pairs = torch.bincount(dy * (2 * PAD + 1) + dx, minlength=(2 * PAD + 1) ** 2)
    assert chi_square(pairs) < 160, f"row and column offsets depend on each other: {pairs.view(9, 9).tolist()}"
    assert abs((dy == dx).float().mean().item() - 1 / 9) < 0.02


def test_about_half_of_the_images_are_flipped_whatever_their_offsets():
    """Overall 0.5 (sd 0.0037): bound 0.02. Within each row or column offset, 2000 draws (sd 0.011):
    bound 0.07. A crop_flip that never flips, always flips, or flips by its offset fails."""
    dy, dx, flipped = draws()
    assert abs(flipped.float().mean().item() - 0.5) < 0.02, f"{flipped.float().mean():.3f} of the images flipped"
    for name, offsets in (("row", dy), ("column", dx)):
        for shift in range(2 * PAD + 1):
            rate = flipped[offsets == shift].float().mean().item()
            assert abs(rate - 0.5) < 0.07, f"{rate:.3f} flipped at {name} offset {shift}"


def test_each_call_draws_afresh():
    """The same seed gives the same draws; two calls in a row draw new offsets and flips for about all
    images (the same for one image with chance 1/162). Fails for an augmentation with its own fixed seed."""
    assert all(torch.equal(a, b) for a, b in zip(draws(seed=0), draws(seed=0)))
    torch.manual_seed(0)
    x = coordinate_images(1000)
    first, second = core.crop_flip(x, PAD), core.crop_flip(x, PAD)
    assert (first != second).flatten(1).any(1).float().mean() > 0.9


def index_set(n):
    """n uint8 images that carry their own index (pixels 0 and 1: index // 256, index % 256), labels = index."""
    index = torch.arange(n)
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = index // 256, index % 256
    return images, index


def epoch_order(batches, epoch):
    """The labels of an epoch's batches in order, each batch checked to hold its own images."""
    order = []
    for it in range(epoch * batches.per_epoch, (epoch + 1) * batches.per_epoch):
        x, y = batches(it)
        assert torch.equal((x[:, 0, 0, 0] * 255).round().long() * 256 + (x[:, 0, 0, 1] * 255).round().long(), y)
        order.append(y)
    return torch.cat(order)


def test_every_epoch_is_a_new_permutation_of_the_whole_set():
    """Two independent permutations of 200 agree in about 1 place (Poisson(1)); 15 is past p = 1e-12.
    The same permutation every epoch agrees in all 200; so does the unshuffled order with itself."""
    n, epochs = 200, 6
    batches = core.Batches(*index_set(n), batch_size=20, seed=3, device=CPU)
    orders = [epoch_order(batches, e) for e in range(epochs)]
    for e, order in enumerate(orders):
        assert torch.equal(order.sort().values, torch.arange(n)), f"epoch {e} is not a permutation of the set"
        assert (order == torch.arange(n)).sum() < 15, f"epoch {e} is not shuffled"
    for a in range(epochs):
        for b in range(a + 1, epochs):
            assert (orders[a] == orders[b]).sum() < 15, f"epochs {a} and {b} share their order"


def test_the_images_a_short_epoch_drops_change_from_epoch_to_epoch():
    """With 210 images in batches of 20, each epoch uses 200 distinct images and drops 10; over 30
    epochs every image is used (a fixed order would drop the same 10 each time: P(some image always
    dropped) = 210 * (10/210)^30, about 1e-37)."""
    batches = core.Batches(*index_set(210), batch_size=20, seed=0, device=CPU)
    seen = torch.zeros(210, dtype=torch.bool)
    for e in range(30):
        order = epoch_order(batches, e)
        assert len(order) == 200 and len(order.unique()) == 200, f"epoch {e} repeats an image"
        seen[order] = True
    assert seen.all(), f"images {(~seen).nonzero().flatten().tolist()} are never used"


def test_a_resumed_run_sees_the_same_augmented_batches():
    """Batches rebuilt from the seed and the global RNG restored from a checkpoint's rng_state give,
    from any iteration on (here one inside epoch 2), exactly the augmented batches of an uninterrupted
    run. Fails if an epoch's order depended on the calls made before (a generator seeded once) or
    on the global RNG, or if crop_flip drew from an RNG the checkpoint does not save."""
    images = torch.randint(0, 256, (96, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(96)
    make = lambda: core.Batches(images, labels, 16, seed=5, device=CPU, augment=lambda x: core.crop_flip(x, PAD))
    stop, end = 15, 24  # per_epoch 6: the cut falls inside epoch 2, the run ends in epoch 3
    torch.manual_seed(7)
    whole = make()
    uninterrupted = [whole(it) for it in range(end)]
    torch.manual_seed(7)
    first = make()
    for it in range(stop):
        first(it)
    saved = core.rng_state(CPU)
    torch.manual_seed(1234)  # a new process: another RNG state until the checkpoint's is restored
    core.set_rng_state(saved, CPU)
    resumed = make()
    for it in range(stop, end):
        x, y = resumed(it)
        assert torch.equal(y, uninterrupted[it][1]) and torch.equal(x, uninterrupted[it][0]), f"iteration {it}"
