"""The CPU fast paths (issue 28/31 speed) against torch's own operations, the device path: core.ranking's sorts, the
metrics' box masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xattr.core.ranking import ranks, sorted_rows, stable_descending


def tricky_rows() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    v = torch.randint(-5, 6, (6, 4000), generator=g).float() / 4  # many ties, negatives
    v[0, ::5] = -0.0  # equal to 0.0 for torch: ties, not an order
    v[1, ::7] = float("inf")
    v[1, 3::7] = -float("inf")
    v[2] = torch.randn(4000, generator=g) * 1e-40  # subnormals of both signs
    v[3] = 1.0  # one value
    v[4] = torch.randn(4000, generator=g)  # distinct
    return v


def test_stable_descending_equals_torchs_stable_sort():
    v = tricky_rows()
    expected = torch.sort(v, dim=1, descending=True, stable=True).indices
    assert torch.equal(stable_descending(v), expected)
    assert torch.equal(stable_descending(v[:, ::3]), torch.sort(v[:, ::3], dim=1, descending=True, stable=True).indices)


def test_ranks_stable_and_random_ties_follow_their_rules():
    v = tricky_rows()
    r = ranks(v, descending=True)
    order = torch.argsort(r, dim=1)
    assert torch.equal(order, torch.sort(v, dim=1, descending=True, stable=True).indices)
    asc = torch.argsort(ranks(v, descending=False), dim=1)
    assert torch.equal(asc, torch.sort(-v, dim=1, descending=True, stable=True).indices)
    rnd = ranks(v, ties="random", seed=3)
    assert torch.equal(torch.sort(v, 1, descending=True).values, v.gather(1, torch.argsort(rnd, 1)))  # ordered
    assert not torch.equal(rnd, r)  # ties broken otherwise than raster order


def test_sorted_rows_equals_torch_sort_nan_last():
    v = tricky_rows().double()
    v[5, ::11] = float("nan")
    assert torch.equal(sorted_rows(v).nan_to_num(7.0), torch.sort(v, dim=1).values.nan_to_num(7.0))


def test_box_masks_union_empty_and_fractional_boxes_by_hand():
    from xattr.metrics._perturb import box_masks

    boxes = [torch.tensor([[0, 0, 2, 2], [3, 1, 5, 2]]), torch.zeros(0, 4), torch.tensor([[0.6, 0.4, 2.4, 1.6]])]
    m = box_masks(boxes, 3, 4, 6, torch.device("cpu")).view(3, 4, 6)
    hand = torch.zeros(3, 4, 6, dtype=torch.bool)
    hand[0, 0:2, 0:2] = True  # mask[y1:y2, x1:x2]
    hand[0, 1:2, 3:5] = True  # the union with the second box
    hand[2, 0:2, 1:2] = True  # centres (j + 0.5, i + 0.5) inside [0.6, 2.4) x [0.4, 1.6): j = 1, i = 0, 1
    assert torch.equal(m, hand)



def test_the_cpu_sorts_do_not_call_torch_sort_and_the_device_path_is_torchs(monkeypatch):
    """The speed design pinned (a float32 CPU row goes through numpy), and the other path (float64 here, a
    device elsewhere) checked against the same oracle."""
    from xattr.core import ranking

    v = tricky_rows()
    expected = torch.sort(v, dim=1, descending=True, stable=True).indices
    expected_values = torch.sort(v.double(), dim=1).values

    def no_sort(*a, **kw):
        raise AssertionError("torch.sort on a float32 CPU row")

    with monkeypatch.context() as m:
        m.setattr(ranking.torch, "sort", no_sort)
        assert torch.equal(stable_descending(v), expected)
    assert torch.equal(stable_descending(v.double()), expected)  # torch's path
    assert torch.equal(sorted_rows(v.double()), expected_values)
    with monkeypatch.context() as m:
        m.setattr(ranking.torch, "sort", no_sort)
        assert torch.equal(sorted_rows(v.double()), expected_values)  # CPU: numpy
    meta = torch.empty(2, 5, device="meta")
    assert sorted_rows(meta).device.type == "meta" and stable_descending(meta).shape == (2, 5)  # a device: torch


def test_lowest_on_distinct_values_and_counts_0_and_1():
    from xattr.core.ranking import lowest

    key = torch.randperm(50, generator=torch.Generator().manual_seed(0)).float().expand(4, 50).contiguous()
    counts = torch.tensor([0, 1, 2, 49])
    expected = key.argsort(1).argsort(1) < counts[:, None]  # distinct: the counts smallest
    assert torch.equal(lowest(key, counts), expected)


def test_highest_and_lowest_equal_the_first_counts_of_torchs_stable_sorts_on_tricky_rows():
    """The selection path (issue 28: relevance rank, top-k; issue 31: Greedy's rounds) against the first
    ``counts`` entries of torch's stable sorts: ties, -0.0, infinities, subnormals, NaN (last, as ``ranks``),
    counts 0, 1, mixed per row and the whole row, short and long rows (> 8 192 values)."""
    from xattr.core.ranking import highest, lowest

    g = torch.Generator().manual_seed(3)
    for v in (tricky_rows(), torch.randint(-3, 4, (3, 20_000), generator=g).float(), torch.randn(4, 10_000, generator=g)):
        b, n = v.shape
        for counts in (torch.randint(0, n + 1, (b,), generator=g), torch.full((b,), n // 3), torch.zeros(b, dtype=torch.long),
                       torch.ones(b, dtype=torch.long), torch.full((b,), n)):
            down = torch.sort(v.nan_to_num(nan=-float("inf")), dim=1, descending=True, stable=True).indices
            expected = torch.zeros_like(v, dtype=torch.bool).scatter_(1, down, torch.arange(n).expand(b, n) < counts[:, None])
            assert torch.equal(highest(v, counts), expected)
            up = torch.sort(v, dim=1, stable=True).indices
            expected = torch.zeros_like(v, dtype=torch.bool).scatter_(1, up, torch.arange(n).expand(b, n) < counts[:, None])
            if not v.isnan().any():
                assert torch.equal(lowest(v, counts), expected)
    v = tricky_rows()
    v[5, ::2] = float("nan")
    counts = torch.tensor([10, 4000, 100, 7, 3999, 2500])  # row 5: past its 2 000 numbers, NaN in raster order
    down = torch.sort(v.nan_to_num(nan=-float("inf")), dim=1, descending=True, stable=True).indices
    expected = torch.zeros_like(v, dtype=torch.bool).scatter_(1, down, torch.arange(4000).expand(6, 4000) < counts[:, None])
    assert torch.equal(highest(v, counts), expected) and highest(v, counts)[5, ::2].sum() == 500


def test_lowest_positive_takes_the_smallest_positive_values_in_a_stable_order_on_both_paths():
    """GreedyPruning's selection (issue 31) against a lexicographic stable sort (positive first, then by value,
    then by index): +inf is positive, 0.0 / -0.0 / negatives / NaN never taken, counts past a row's positive
    values take them all, counts 0 none; the CPU path (uint32 keys in numpy) and the device path (int64 keys in
    torch, run here on the CPU) agree."""
    from xattr.core import ranking
    from xattr.core.ranking import count_true, lowest_positive

    g = torch.Generator().manual_seed(5)
    rows = [tricky_rows(), torch.randint(-2, 5, (4, 9000), generator=g).float(), torch.rand(3, 300, generator=g) ** 3]
    v = rows[0].clone()
    v[5, ::4] = float("nan")
    v[5, 1::4] = float("inf")
    v[4, ::5] = torch.tensor([1], dtype=torch.int32).view(torch.float32)  # the least subnormal: bits 1, positive
    v[4, 1::5] = torch.tensor([0x7F800001], dtype=torch.int32).view(torch.float32)  # the NaN next to +inf's key
    rows.append(v)
    for v in rows:
        b, n = v.shape
        pos = v > 0
        value = torch.where(pos, v, torch.zeros_like(v))
        by_value = torch.sort(value, dim=1, stable=True).indices  # then by positive first, stably
        order = by_value.gather(1, torch.sort((~pos).gather(1, by_value).long(), dim=1, stable=True).indices)
        n_pos = pos.sum(1)
        assert torch.equal(count_true(pos), n_pos)
        for counts in (torch.randint(0, n + 1, (b,), generator=g), n_pos, n_pos + 3, torch.zeros(b, dtype=torch.long),
                       torch.ones(b, dtype=torch.long), torch.full((b,), 7)):
            first = torch.arange(n).expand(b, n) < torch.minimum(counts, n_pos)[:, None]
            expected = torch.zeros_like(v, dtype=torch.bool).scatter_(1, order, first)
            assert torch.equal(lowest_positive(v, counts), expected)
            assert torch.equal(ranking._lowest_positive_torch(v, counts), expected)
    with pytest.raises(TypeError, match=r"^lowest_positive takes float32 scores, not torch.float64$"):
        lowest_positive(torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, dtype=torch.long))
    no_rows = torch.zeros(0, 5)
    assert lowest_positive(no_rows, torch.zeros(0, dtype=torch.long)).shape == (0, 5)
    assert ranking.lowest(no_rows, torch.zeros(0, dtype=torch.long)).shape == (0, 5)


def test_row_counts_equal_numpys_axis_count_on_long_short_and_empty_rows(monkeypatch):
    """``row_counts`` (issue 31): ``np.count_nonzero(a, axis=1)`` whatever the rows, with rows of at least
    ``ROW_COUNT_MIN`` counted one by one (numpy's count without an axis) and shorter rows with the axis."""
    from xattr.core import ranking

    rng = np.random.default_rng(3)
    long_rows = rng.random((3, ranking.ROW_COUNT_MIN + 7)) < 0.3
    cases = [long_rows, long_rows[:, ::2], rng.random((5, 100)) < 0.5, (rng.random((2, 9000)) < 0.5) * 2.5,
             np.zeros((0, 9000), bool), np.ones((4, 9000), bool)]
    for a in cases:
        got = ranking.row_counts(a)
        assert got.dtype == np.int64 and got.tolist() == [int(sum(bool(v) for v in row)) for row in a]
    calls = []
    real = ranking.np.count_nonzero
    monkeypatch.setattr(ranking.np, "count_nonzero", lambda a, **kw: calls.append(kw.get("axis")) or real(a, **kw))
    ranking.row_counts(long_rows)
    assert calls == [None, None, None]
    calls.clear()
    ranking.row_counts(cases[2])
    assert calls == [1]


def test_the_selections_take_numpy_on_a_cpu_and_torch_on_a_device(monkeypatch):
    """The speed design (issues 28, 31), pinned: on a CPU, ``lowest`` / ``nth_smallest`` of float32 or float64 and
    ``lowest_positive`` run in numpy (``torch.topk`` and the torch form are not called), ``count_true`` counts
    with ``np.count_nonzero``; bfloat16 (no numpy type) takes the torch form and gives the same values."""
    from xattr.core import ranking

    def forbidden(*a, **kw):
        raise AssertionError("the torch form on a CPU")

    g = torch.Generator().manual_seed(9)
    v = torch.rand(3, 500, generator=g)
    counts = torch.tensor([5, 0, 499])
    expected = (ranking.lowest(v, counts), ranking.lowest_positive(v, counts), ranking.nth_smallest(v, counts))
    counted, numpy_calls = [], []
    real, real_lowest = ranking.np.count_nonzero, ranking._lowest_numpy
    with monkeypatch.context() as m:
        m.setattr(ranking, "_lowest_numpy", lambda *a: numpy_calls.append(1) or real_lowest(*a))
        m.setattr(ranking.torch, "topk", forbidden)
        m.setattr(ranking, "_lowest_positive_torch", forbidden)
        m.setattr(ranking.np, "count_nonzero", lambda *a, **kw: counted.append(1) or real(*a, **kw))
        assert torch.equal(ranking.lowest(v.double(), counts), expected[0]) and len(numpy_calls) == 1
        assert torch.equal(ranking.lowest_positive(v, counts), expected[1]) and len(numpy_calls) == 2
        assert torch.equal(ranking.nth_smallest(v, counts), expected[2])
        counted.clear()
        assert ranking.count_true(v > 0.5).tolist() == (v > 0.5).sum(1).tolist() and counted
    b16 = v.bfloat16()
    torch.testing.assert_close(ranking.nth_smallest(b16, counts), torch.sort(b16, dim=1).values.gather(
        1, (counts.clamp(1, 500) - 1)[:, None])[:, 0])


def test_nth_smallest_by_hand_and_its_cpu_path_partitions_once_per_count_without_topk(monkeypatch):
    """The speed design (issue 28): on a CPU, rows of equal count share one ``np.partition`` call with a single
    ``kth`` (numpy's SIMD selection; a list of kth runs ~7x slower here), and ``torch.topk`` / ``torch.sort`` are
    not called; on a device, ``torch.topk``. Counts clamp to [1, N]."""
    import numpy as np

    from xattr.core import ranking
    from xattr.core.ranking import nth_smallest

    key = torch.tensor([[5.0, 1.0, 4.0, 1.0, 3.0], [2.0, 2.0, 9.0, -1.0, 0.0], [7.0, 6.0, 5.0, 4.0, 3.0]])
    counts = torch.tensor([3, 3, 9])  # 3rd smallest: 3 and 2; 9 clamps to 5: the largest, 7
    assert nth_smallest(key, counts).tolist() == [3.0, 2.0, 7.0]
    assert nth_smallest(key, torch.tensor([0, 1, 2])).tolist() == [1.0, -1.0, 4.0]  # 0 clamps to 1
    calls = []
    real = np.partition

    def partition(a, kth, **kw):
        assert isinstance(kth, int | np.integer), kth
        calls.append((a.shape[0], int(kth)))
        return real(a, kth, **kw)

    def forbidden(*a, **kw):
        raise AssertionError("torch.topk / torch.sort on a CPU")

    g = torch.Generator().manual_seed(0)
    v = torch.rand(6, 3000, generator=g)
    counts = torch.tensor([10, 500, 10, 10, 500, 3000])
    expected = torch.sort(v, dim=1).values.gather(1, (counts - 1)[:, None])[:, 0]
    tenth = torch.sort(v, dim=1).values[:, 9].contiguous()
    with monkeypatch.context() as m:
        m.setattr(ranking.np, "partition", partition)
        m.setattr(ranking.torch, "topk", forbidden)
        m.setattr(ranking.torch, "sort", forbidden)
        assert torch.equal(nth_smallest(v, counts), expected)
        assert sorted(calls) == [(1, 2999), (2, 499), (3, 9)]
        calls.clear()
        assert torch.equal(nth_smallest(v, torch.full((6,), 10)), tenth)
        assert calls == [(6, 9)]
    assert torch.equal(nth_smallest(v.double(), counts), expected.double())
    empty = torch.zeros(0, 1, dtype=torch.int64)  # torch's path (not a float): an empty batch of one column
    assert nth_smallest(empty, torch.zeros(0, dtype=torch.long)).shape == (0,)
    tall = torch.tensor([[2.0, 1.0], [0.0, 5.0], [4.0, 3.0]])  # more rows than columns, 2 (= N) of one count
    assert nth_smallest(tall, torch.tensor([1, 1, 2])).tolist() == [1.0, 0.0, 4.0]
    half = v.half()  # no numpy selection for half: torch.topk
    assert torch.equal(nth_smallest(half, counts), torch.sort(half, dim=1).values.gather(1, (counts - 1)[:, None])[:, 0])


def test_ranks_numpy_ties_nan_last_seeded_random_and_error_lines():
    import numpy as np
    import pytest

    from xattr.core.ranking import share_count
    from xattr.errors import XattrConfigError

    v = tricky_rows()
    order = np.stack([np.argsort(row) for row in v.numpy()])[:, ::-1]  # the reference codes' order, top first
    r = ranks(v, ties="numpy")
    assert torch.equal(torch.argsort(r, 1), torch.from_numpy(order.copy()))
    nan = torch.tensor([[0.5, float("nan"), 2.0, -1.0]])
    assert ranks(nan).tolist() == [[1, 3, 0, 2]] and ranks(nan, descending=False).tolist() == [[1, 3, 2, 0]]
    assert torch.equal(ranks(v, ties="random", seed=5), ranks(v, ties="random", seed=5))
    assert torch.equal(ranks(v, ties="random"), ranks(v, ties="random", seed=0))  # the default seed is 0
    with pytest.raises(XattrConfigError, match=r"^unknown ties 'first'"):
        ranks(v, ties="first")
    with pytest.raises(XattrConfigError, match=r"^unknown rounding 'up'"):
        share_count(0.5, 10, rounding="up")


def test_box_masks_bounds_on_pixel_centres_are_half_open():
    from xattr.metrics._perturb import box_masks

    # centres (j + 0.5, i + 0.5): x in [0.5, 2.5) takes j = 0, 1 (not 2); y in [0.5, 1.5) takes i = 0 only
    m = box_masks([torch.tensor([[0.5, 0.5, 2.5, 1.5]])], 1, 3, 4, torch.device("cpu")).view(3, 4)
    hand = torch.zeros(3, 4, dtype=torch.bool)
    hand[0, 0:2] = True
    assert torch.equal(m, hand)


def test_perturbation_readouts_and_shape_errors_by_hand():
    """_perturb's read-outs (softmax over classes, the logit, sigmoid for multi-label and for one output unit:
    p for target 1, 1 - p for 0, as the InputIBA text code) and its one-line errors."""
    import pytest

    from xattr.errors import XattrConfigError
    from xattr.metrics._perturb import box_masks, flat_map, readout, token_unk_index

    out = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([1, 0])
    soft = out.softmax(1)
    assert torch.allclose(readout(out, t, "softmax"), torch.stack([soft[0, 1], soft[1, 0]]))
    assert readout(out, t, "logit").tolist() == [2.0, 0.0]
    assert torch.allclose(readout(out, t, "sigmoid"), torch.tensor([2.0, 0.0]).sigmoid())
    one = torch.tensor([[0.7], [0.7]])
    p = torch.tensor(0.7).sigmoid()
    assert torch.allclose(readout(one, torch.tensor([1, 0]), "sigmoid"), torch.stack([p, 1 - p]))
    x = torch.zeros(2, 3, 4, 5)
    assert flat_map(torch.ones(2, 3, 4, 5), x).shape == (2, 20)  # channels averaged
    with pytest.raises(XattrConfigError, match=r"^bad maps shape \(2, 1, 5, 4\); valid choices: \(B, 1, H, W\) with H, W = \(4, 5\)$"):
        flat_map(torch.ones(2, 1, 5, 4), x)
    with pytest.raises(XattrConfigError, match=r"^missing extra 'boxes'; valid choices: a list of \(N_i, 4\) xyxy tensors per image$"):
        box_masks(None, 2, 4, 5, torch.device("cpu"))
    with pytest.raises(XattrConfigError, match=r"^bad boxes length 1; valid choices: one entry per image \(2\)$"):
        box_masks([torch.zeros(1, 4)], 2, 4, 5, torch.device("cpu"))
    assert token_unk_index(7, torch.nn.Identity()) == 7
    net = torch.nn.Linear(2, 2)
    net.unk_index = 3
    assert token_unk_index(None, net) == 3
    with pytest.raises(XattrConfigError, match=r"^missing unk_index for token inputs; valid choices: the vocabulary's <unk> id \(Identity names none\)$"):
        token_unk_index(None, torch.nn.Identity())


def test_tile_index_by_hand_with_a_remainder_and_its_error_line():
    """As the IBA paper code's ``GridView``: 10 x 7 pixels in tiles of 4 are 2 x 1 tiles, the last row/column
    absorbing the remainder (rows 8-9 join tile row 1; columns 4-6 join column 0)."""
    import re

    from xattr.errors import XattrConfigError
    from xattr.metrics._perturb import tile_index

    tid, n = tile_index(10, 7, 4)
    assert n == 2 and tid.view(10, 7)[:, 0].tolist() == [0] * 4 + [1] * 6 and (tid.view(10, 7) == tid.view(10, 7)[:, :1]).all()
    tid, n = tile_index(9, 9, 4)  # 2 x 2 tiles of 4, 4 + remainder 1
    assert n == 4 and tid.view(9, 9)[8, 8].item() == 3 and tid.view(9, 9)[3, 4].item() == 1
    with pytest.raises(XattrConfigError, match="^" + re.escape("bad tile 0; valid choices: an integer >= 1") + "$"):
        tile_index(4, 4, 0)


def test_folding_leaves_the_model_untouched_and_channels_last_is_applied_and_restored():
    """``folded`` folds a deep copy (the caller's model keeps its BatchNorms and values); ``channels_last_on``
    puts the model's 4-d weights in channels-last for the block and back after, and leaves them alone when off."""
    from torch import nn

    from xattr.metrics._perturb import channels_last_on, folded

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    copy = folded(net, x)
    assert copy is not net and not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    assert isinstance(net[1], nn.BatchNorm2d) and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    torch.testing.assert_close(copy(x), net(x), rtol=1e-5, atol=1e-6)
    w = net[0].weight
    with channels_last_on(net, True, torch.device("cpu")):
        assert net[0].weight.is_contiguous(memory_format=torch.channels_last) and not net[0].weight.is_contiguous()
    assert net[0].weight.is_contiguous() and torch.equal(net[0].weight, w)
    with channels_last_on(net, False, torch.device("cpu")):
        assert net[0].weight.is_contiguous()


def test_a_fold_that_moves_the_output_by_more_than_rtol_is_refused_and_the_readout_runs_in_fp32(monkeypatch):
    """The fold's safety gate: a folded copy whose output differs from the model's by more than 1e-4 of its
    largest magnitude is not used (here a fake fold off by 1e-2); ``chunked_readout``'s default precision is
    fp32: its read-out equals the plain float32 forward to the last bit of float rounding."""
    import torch.fx.experimental.optimization as fx_opt
    from torch import nn

    from xattr.metrics._perturb import chunked_readout, folded

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    x = torch.randn(2, 3, 8, 8)

    class Off(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, v):
            return self.m(v) * 1.01

    monkeypatch.setattr(fx_opt, "fuse", lambda model, inplace=False: Off(model))
    assert folded(net, x) is net
    lin = nn.Linear(64, 3).eval()
    with torch.no_grad():
        lin.weight.copy_(torch.linspace(-1.0001, 1.0003, 192).view(3, 64))
    v = torch.linspace(-3.0007, 2.9993, 128).view(2, 64)
    got = chunked_readout(lin, 2, lambda j: (v[j], torch.tensor([0, 2])[j]), None, torch.device("cpu"), "logit")
    want = lin(v).detach()[[0, 1], [0, 2]]
    assert torch.equal(got, want)


def test_channels_last_default_by_device_and_flat_maps_of_grey_images():
    """``channels_last: None`` is on for CUDA and CPU and off for other devices (a ``torch.device`` object names
    CUDA without a GPU); an explicit setting wins. ``flat_map`` of a ``(B, H, W)`` image without a channel axis:
    its last two sizes are H, W (a non-square 4 x 6 image), in the result and in the error line."""
    from xattr.errors import XattrConfigError
    from xattr.metrics._perturb import flat_map, use_channels_last

    cuda, cpu, meta = torch.device("cuda"), torch.device("cpu"), torch.device("meta")
    assert [use_channels_last(None, d) for d in (cuda, cpu, meta)] == [True, True, False]
    assert use_channels_last(False, cuda) is False and use_channels_last(True, meta) is True
    x = torch.zeros(2, 4, 6)
    maps = torch.arange(48.0).view(2, 4, 6)
    assert torch.equal(flat_map(maps, x), maps.view(2, 24))
    with pytest.raises(XattrConfigError, match=r"^bad maps shape \(2, 6, 4\); valid choices: \(B, 1, H, W\) with H, W = \(4, 6\)$"):
        flat_map(torch.ones(2, 6, 4), x)


def test_folding_a_nested_block_leaves_the_model_untouched_and_a_dict_output_is_not_folded():
    """A conv + BatchNorm inside a nested block (the fold rewrites the block's children): the caller's model
    keeps its BatchNorm and gives the same output as before; a model whose output is a dict (not a tensor to
    compare) is returned as it is."""
    from torch import nn

    from xattr.metrics._perturb import folded

    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), nn.ReLU()).eval()
    with torch.no_grad():
        net[0][1].running_mean.uniform_(-1, 1)
        net[0][1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = net(x)
        copy = folded(net, x)
        assert copy is not net and isinstance(net[0][1], nn.BatchNorm2d)
        assert torch.equal(net(x), before)
        torch.testing.assert_close(copy(x), before, rtol=1e-5, atol=1e-6)

    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, v):
            return {"logits": self.bn(self.conv(v))}

    d = DictOut().eval()
    assert folded(d, x) is d


@pytest.mark.parametrize("bias, offset, rtol, folds", [
    ((1.0, -0.5), 0.25, 0.25, True),        # off by exactly rtol of the largest magnitude: kept (<= rtol)
    ((1000.0, -0.5), 0.0625, 1e-4, True),   # 6.25e-5 of the largest magnitude 1000: kept
    ((1.0, -0.5), 0.0625, 1e-4, False),     # 6.25e-2 of 1: refused
    ((1.5e-12, 0.0), 1.75e-16, 1e-4, False),  # 1.17e-4 of a tiny output 1.5e-12: refused (the floor is for 0)
])
def test_the_fold_gate_is_relative_to_the_outputs_largest_magnitude(monkeypatch, bias, offset, rtol, folds):
    """``folded``'s gate by hand: a model whose output is exactly its conv bias (zero weights, an identity
    BatchNorm with eps 0), a fake fold adding ``offset``: kept iff max |got - ref| / max |ref| <= ``rtol``."""
    import torch.fx.experimental.optimization as fx_opt
    from torch import nn

    from xattr.metrics._perturb import folded

    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, eps=0.0)).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor(bias))
    x = torch.randn(1, 1, 2, 2)
    with torch.no_grad():
        assert torch.equal(net(x), torch.tensor(bias).view(1, 2, 1, 1).expand(1, 2, 2, 2))

    class Shifted(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, v):
            return self.m(v) + offset

    monkeypatch.setattr(fx_opt, "fuse", lambda model, inplace=False: Shifted(model))
    assert (folded(net, x, rtol=rtol) is not net) == folds
