"""Temperature schedules for SUA: endpoints, shape, state_dict, and feeding modules."""
from __future__ import annotations

import math

import pytest
import torch

from lic_quant.schedules import (ConstantSchedule, CosineSchedule, ExponentialSchedule,
                                 LinearSchedule)

SCHEDULES = [LinearSchedule, CosineSchedule, ExponentialSchedule]


@pytest.mark.parametrize("cls", SCHEDULES)
@pytest.mark.parametrize("t0,t_min", [(1.0, 0.0), (0.8, 0.1)])
def test_endpoints_monotone_and_hold(cls, t0, t_min):
    s = cls(t0, t_min, steps=50)
    values = [s.value] + [s.step() for _ in range(60)]
    assert values[0] == t0
    assert values[50] == t_min and all(v == t_min for v in values[50:])  # exact, then held
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert all(t_min <= v <= t0 for v in values)
    assert s.temperature == s.value == s() == values[-1]


def test_shapes():
    lin, cos, exp = (cls(1.0, 0.0, steps=100) for cls in SCHEDULES)
    assert lin.value_at(25) == pytest.approx(0.75)
    assert cos.value_at(50) == pytest.approx(0.5)
    assert cos.value_at(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    floor = math.exp(-5.0)
    assert exp.value_at(20) == pytest.approx((math.exp(-1.0) - floor) / (1 - floor))
    assert exp.value_at(20) < lin.value_at(20)  # fast early
    assert ConstantSchedule(0.3).step() == 0.3


def test_delay_holds_t0():
    s = LinearSchedule(1.0, 0.0, steps=10, delay=5)
    assert [s.value_at(k) for k in (0, 5, 10, 15, 99)] == [1.0, 1.0, 0.5, 0.0, 0.0]


def test_state_dict_round_trip():
    s = ExponentialSchedule(0.9, 0.05, steps=40, rate=3.0)
    for _ in range(17):
        s.step()
    state = s.state_dict()
    t = ExponentialSchedule(1.0, 0.0, steps=1)
    t.load_state_dict(state)
    assert t.state_dict() == state and t.value == s.value
    assert t.step() == s.step()
    torch.save(state, __import__("io").BytesIO())  # plain Python values: checkpoint-friendly


def test_attach_feeds_modules_in_place():
    nn_mod = pytest.importorskip("lic_quant.nn")
    gc = nn_mod.GaussianConditional(None, mode="sua")
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), gc)
    buffer = gc.temperature
    s = CosineSchedule(1.0, 0.0, steps=4).attach(model)
    s.step()
    assert gc.temperature is buffer  # same tensor: compiled graphs keep reading it
    assert float(buffer) == pytest.approx(s.value)
    # loading a checkpoint writes the restored value into the attached modules
    s.load_state_dict({**s.state_dict(), "last_step": 4})
    assert float(buffer) == 0.0
    with pytest.raises(ValueError, match="holds no"):
        s.attach(torch.nn.Linear(1, 1))


@pytest.mark.parametrize("kwargs,err", [
    (dict(t0=1.5), ValueError), (dict(t_min=-0.1), ValueError), (dict(steps=0), ValueError),
    (dict(steps=2.5), TypeError), (dict(delay=-1), ValueError),
])
def test_bad_settings(kwargs, err):
    with pytest.raises(err):
        LinearSchedule(**{"t0": 1.0, "t_min": 0.0, "steps": 10, **kwargs})
