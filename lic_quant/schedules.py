"""Temperature schedules for stochastic uniform annealing (SUA).

A schedule maps a step count k to a temperature T(k) that goes from ``t0`` to ``t_min`` over
``steps`` steps (after an optional ``delay`` during which it holds ``t0``) and holds ``t_min``
afterwards. A training loop calls ``schedule.step()`` once per optimizer step; modules attached
with ``attach(...)`` (lic_quant.nn.GaussianConditional or EntropyBottleneck, or a model that
contains them) get the new temperature written into their temperature buffer in place, so compiled
graphs do not recompile::

    schedule = CosineSchedule(t0=1.0, t_min=0.0, steps=100_000).attach(model)
    for batch in loader:
        loss = ...; loss.backward(); optimizer.step()
        schedule.step()

``state_dict()``/``load_state_dict()`` save and restore the position (and the settings), as for
torch's LR schedulers; loading writes the restored temperature into the attached modules.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ._checks import check_unit_interval

__all__ = [
    "ConstantSchedule",
    "CosineSchedule",
    "ExponentialSchedule",
    "LinearSchedule",
    "TemperatureSchedule",
]


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


class TemperatureSchedule:
    """Base class: subclasses define ``shape(fraction)``, the share of ``t0 - t_min`` still left
    at ``fraction`` = (k - delay) / steps in [0, 1], with shape(0) = 1 and shape(1) = 0."""

    def __init__(self, t0: float = 1.0, t_min: float = 0.0, steps: int = 1, *, delay: int = 0):
        self.t0 = check_unit_interval("t0", t0)
        self.t_min = check_unit_interval("t_min", t_min)
        self.steps = _check_count("steps", steps, 1)
        self.delay = _check_count("delay", delay, 0)
        self.last_step = 0
        self._modules: list[Any] = []

    # -- the curve -------------------------------------------------------------------------------

    def shape(self, fraction: float) -> float:
        raise NotImplementedError

    def value_at(self, step: int) -> float:
        """T after ``step`` calls of ``step()``."""
        fraction = min(max(step - self.delay, 0) / self.steps, 1.0)
        if fraction >= 1.0:
            return self.t_min
        value = self.t_min + (self.t0 - self.t_min) * self.shape(fraction)
        low, high = sorted((self.t0, self.t_min))
        return min(max(value, low), high)  # no rounding drift outside [t_min, t0]

    @property
    def value(self) -> float:
        """The current temperature."""
        return self.value_at(self.last_step)

    temperature = value

    def __call__(self) -> float:
        return self.value

    # -- stepping and feeding modules ------------------------------------------------------------

    def attach(self, *modules) -> "TemperatureSchedule":
        """Drive the temperature of these modules: each may be a lic_quant.nn.GaussianConditional
        or EntropyBottleneck, or any module containing some (all are found). Sets the current
        value at once."""
        from .nn import _QuantizationSettings

        for module in modules:
            found = ([module] if isinstance(module, _QuantizationSettings) else
                     [m for m in module.modules() if isinstance(m, _QuantizationSettings)]
                     if isinstance(module, torch.nn.Module) else [])
            if not found:
                raise ValueError(f"attach: {type(module).__name__} holds no "
                                 f"lic_quant.nn.GaussianConditional or EntropyBottleneck")
            for m in found:
                if all(m is not known for known in self._modules):
                    self._modules.append(m)
        self._apply()
        return self

    def detach(self) -> None:
        self._modules.clear()

    def _apply(self) -> None:
        value = self.value
        for module in self._modules:
            module.temperature = value

    def step(self) -> float:
        """Advance one step; write the new temperature into the attached modules; return it."""
        self.last_step += 1
        self._apply()
        return self.value

    # -- checkpoints -------------------------------------------------------------------------------

    def _settings(self) -> dict:
        return {"t0": self.t0, "t_min": self.t_min, "steps": self.steps, "delay": self.delay}

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, **self._settings()}

    def load_state_dict(self, state_dict: dict) -> None:
        settings = {k: state_dict[k] for k in self._settings() if k in state_dict}
        for key, value in settings.items():
            setattr(self, key, value)
        self.last_step = _check_count("last_step", state_dict["last_step"], 0)
        self._apply()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self._settings().items())
        return f"{type(self).__name__}({args}, last_step={self.last_step}, value={self.value:.4g})"


class ConstantSchedule(TemperatureSchedule):
    """T = t0 forever (a fixed temperature with the same interface)."""

    def __init__(self, t0: float = 1.0):
        super().__init__(t0, t0, 1)

    def value_at(self, step: int) -> float:
        return self.t0


class LinearSchedule(TemperatureSchedule):
    """T falls linearly from t0 to t_min."""

    def shape(self, fraction: float) -> float:
        return 1.0 - fraction


class CosineSchedule(TemperatureSchedule):
    """Half a cosine from t0 to t_min: slow at both ends."""

    def shape(self, fraction: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * fraction))


class ExponentialSchedule(TemperatureSchedule):
    """Exponential decay from t0 that lands exactly on t_min after ``steps`` steps.

    The share of t0 - t_min still left is (exp(-rate·f) - exp(-rate)) / (1 - exp(-rate)) at
    f = k / steps: fast early, slow late; ``rate`` -> 0 tends to the linear schedule. (A pure
    geometric decay t0·q^k never reaches t_min = 0, which SUA needs to end at rounding.)
    """

    def __init__(self, t0: float = 1.0, t_min: float = 0.0, steps: int = 1, *,
                 rate: float = 5.0, delay: int = 0):
        super().__init__(t0, t_min, steps, delay=delay)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise ValueError(f"rate must be a positive number; got {rate!r}")
        self.rate = float(rate)

    def shape(self, fraction: float) -> float:
        floor = math.exp(-self.rate)
        return (math.exp(-self.rate * fraction) - floor) / (1.0 - floor)

    def _settings(self) -> dict:
        return {**super()._settings(), "rate": self.rate}
