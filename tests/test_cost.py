"""mfha.cost: a model's cost as a ratio to the fixed reference model timed beside it."""

import pytest
import torch

from mfha import ModelConfig, TrainConfig, measure_cost, uniform
from mfha.cost import REFERENCE, REFERENCE_BATCH

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the cost's CPU clock counts one thread


def test_the_reference_against_itself_costs_one():
    # same model, same shape: only timing noise separates the two sides
    tc = TrainConfig(batch_size=REFERENCE_BATCH, seq_len=REFERENCE.max_seq_len)
    cost = measure_cost(REFERENCE, tc, "train", seconds=0.5, min_rounds=7)
    assert 0.8 < cost.ratio < 1.25, cost
    assert cost.low <= cost.ratio <= cost.high and cost.rounds >= 7


def test_a_model_four_times_the_width_costs_more_and_the_raw_speeds_are_kept():
    small = ModelConfig(vocab_size=128, dim=32, n_layers=2, heads=uniform(2, 16), max_seq_len=64)
    big = ModelConfig(vocab_size=128, dim=128, n_layers=2, heads=uniform(8, 16), max_seq_len=64)
    tc = TrainConfig(batch_size=8, seq_len=64)
    a, b = (measure_cost(m, tc, "train", seconds=0.3) for m in (small, big))
    assert b.ratio > 1.5 * a.ratio and b.wall_ratio > a.wall_ratio, (a, b)
    for c in (a, b):
        assert c.model_tokens_per_s > 0 and c.reference_tokens_per_s > 0 and c.model_s > 0 and c.reference_s > 0
        assert c.wall_s >= c.rounds * (c.model_s + c.reference_s)  # every round timed both sides


def test_one_thread_counts_cpu_time_and_several_count_wall_time():
    # CPU time: a neighbour taking turns on the core does not stretch it; with threads that spin it would mislead
    assert measure_cost(REFERENCE, TrainConfig(batch_size=2, seq_len=32), "train", seconds=0.1).clock == "cpu"
    torch.set_num_threads(2)
    c = measure_cost(REFERENCE, TrainConfig(batch_size=2, seq_len=32), "train", seconds=0.1)
    assert c.clock == "wall" and c.ratio == c.wall_ratio


def test_decode_cost_grows_with_depth():
    shallow = ModelConfig(vocab_size=128, dim=64, n_layers=1, heads=uniform(4, 16), max_seq_len=128)
    deep = ModelConfig(vocab_size=128, dim=64, n_layers=8, heads=uniform(4, 16), max_seq_len=128)
    tc = TrainConfig(batch_size=8, seq_len=64)
    a, b = (measure_cost(m, tc, "decode", seconds=0.3) for m in (shallow, deep))
    assert a.kind == b.kind == "decode"
    assert b.ratio > 2 * a.ratio, (a, b)


def test_a_short_model_decodes_past_its_context():
    # max_seq_len below the tokens decoded: the cache refills, as generation does
    short = ModelConfig(vocab_size=128, dim=32, n_layers=1, heads=uniform(2, 16), max_seq_len=16)
    assert measure_cost(short, TrainConfig(batch_size=2, seq_len=16), "decode", seconds=0.1).ratio > 0


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"kind": "infer"}, r"kind must be one of train, decode, but got kind='infer'\."),
        ({"kind": "train", "seconds": 0}, r"seconds must be a positive number, but got seconds=0\."),
        ({"kind": "train", "min_rounds": 0}, r"min_rounds must be a positive integer, but got min_rounds=0\."),
    ],
)
def test_arguments_are_checked_up_front(kw, message):
    with pytest.raises(ValueError, match=message):
        measure_cost(REFERENCE, TrainConfig(), **kw)
