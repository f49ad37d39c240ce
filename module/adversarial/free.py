"""Methods that reuse the backward passes they already pay for: FreeLB, FreeAT and YOPO.

Each owns its backward passes: it calls ``batch.backward`` once per pass, which accumulates parameter
gradients (the caller's callable applies loss scaling, accumulation and distributed sync), and reads the
perturbation's gradient from the same backward. Only the last pass of a batch runs through ``batch.run``
(the DDP wrapper, which all-reduces); every other pass uses ``batch.perturbed_run``. Because the
perturbation direction is normalised (or its sign taken), a loss scale in the backward cancels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from module.adversarial.base import AdversarialBatch, AdversarialMethod, AdversarialStep
from module.adversarial.delta import (
    delta_ratio,
    device_of,
    finite_or_zero,
    initial_noise,
    length_unit,
    perturb_output,
    position_mask,
    scale_length,
)
from module.adversarial.gradient_attacks import check_non_negative
from module.adversarial.hooks import RngSnapshot, add_to_output
from module.adversarial.names import AdversarialMethodName
from module.adversarial.norms import NormLevel, PNorm, Radius, normalize, project
from module.adversarial.site import AdversarialSite, MissingSitePart, SitePart

__all__ = ["YOPO", "FreeAT", "FreeATConfig", "FreeLB", "FreeLBConfig", "YOPOConfig"]


def _leaf(value: Tensor) -> Tensor:
    return value.detach().clone().requires_grad_(True)


def _step_stats(
    loss: Tensor, delta: Tensor, output: Tensor, mask: Tensor, finite: Tensor
) -> dict[str, Tensor]:
    return {
        "adv_loss": loss.detach(),
        "delta_ratio": delta_ratio(delta, output, mask),
        "adv_skipped": (~finite).float(),
    }


@dataclass(frozen=True)
class FreeLBConfig:
    """FreeLB (Zhu et al. 2020, arXiv:1909.11764), Alg. 1: delta_0 ~ U(-1, 1) scaled by
    ``init_mag / sqrt(L * d)`` per example (L its real length, d the width); K ascent steps, each one
    backward at weight 1/K that also accumulates the parameter gradient; delta moves by ``step_size``
    along its l2-normalised (per example) gradient and is projected onto the ``epsilon`` ball (inf: no
    bound, the authors' default ``adv-max-norm 0``). Dropout masks are shared across the K passes. The
    authors' GLUE settings are K = 2, step 1e-1, init 1e-1 in embedding units (``radius absolute``): about
    1% of a 128-token BERT-base sentence's embedding norm but 2-3% of a short MiniLM one. The defaults keep
    K = 2 and read step and init relative to each sentence's embedding norm: 0.02 each (``delta_ratio``
    about 0.02 on any encoder)."""

    k: int = 2
    step_size: float = 0.02
    init_mag: float = 0.02
    epsilon: float = math.inf
    p_norm: PNorm = PNorm.L2
    norm_level: NormLevel = NormLevel.SENTENCE
    dropout_replay: bool = True
    radius: Radius = Radius.RELATIVE

    def __post_init__(self) -> None:
        object.__setattr__(self, "p_norm", PNorm(self.p_norm))
        object.__setattr__(self, "norm_level", NormLevel(self.norm_level))
        object.__setattr__(self, "radius", Radius(self.radius))
        if self.k < 1:
            raise ValueError(f"FreeLB needs k >= 1 ascent steps, got {self.k}")
        check_non_negative("FreeLB", self, "step_size", "init_mag", "epsilon")


class FreeLB(AdversarialMethod):
    """K passes on x + delta_t; the parameter gradient is the mean of the K adversarial gradients."""

    name = AdversarialMethodName.FREELB
    owns_backward = True

    def __init__(self, target: nn.Module, config: FreeLBConfig | None = None) -> None:
        super().__init__(target)
        self.config = config or FreeLBConfig()

    def __call__(self, batch: AdversarialBatch) -> AdversarialStep:
        config = self.config
        rng = RngSnapshot.capture(device_of(self.target, batch.token_mask)) if config.dropout_replay else None
        # Without per-row seeds the initial noise comes from the global RNG, in pass 0's forward: the state
        # after that draw is what pass 0's later dropout layers see, so the replays restore it there too.
        after_noise = _AfterNoise(rng if batch.noise_seeds is None else None)
        delta: Tensor | None = None
        output = mask = torch.empty(0)
        finite = torch.ones((), dtype=torch.bool)
        total = torch.zeros(())
        for step in range(config.k):
            last = step + 1 == config.k
            make: Callable[[Tensor], Tensor]
            if delta is None:
                make = lambda out: _leaf(after_noise.drawn(self._initial_delta(out, batch)))  # noqa: E731
            else:
                make = lambda out, current=delta: _leaf(after_noise.restored(current))  # noqa: E731
            with perturb_output(self.target, make) as seen:
                runner = batch.run if last else batch.inner_run
                if rng is not None and step > 0:
                    with rng.replay():
                        outputs = runner()
                else:
                    outputs = runner()
            assert seen.delta is not None and seen.output is not None
            if step == 0:
                output = seen.output.detach()
                mask = position_mask(batch.token_mask, output)
                unit = length_unit(config.radius, output, mask, config.p_norm, config.norm_level)
                finite = finite.to(output.device)
                total = total.to(output.device)
            loss = batch.loss(outputs)
            batch.backward(loss / config.k)
            total = total + loss.detach() / config.k
            delta = seen.delta.detach()
            if not last:
                grad = seen.delta.grad if seen.delta.grad is not None else torch.zeros_like(delta)
                grad, step_finite = finite_or_zero(grad)
                finite = finite & step_finite
                direction = normalize(grad * mask, config.p_norm, config.norm_level)
                delta = project(
                    delta + scale_length(config.step_size, unit) * direction,
                    config.p_norm,
                    scale_length(config.epsilon, unit),
                    config.norm_level,
                )
        assert delta is not None
        return AdversarialStep(total, None, True, _step_stats(total, delta, output, mask, finite), delta)

    def _initial_delta(self, output: Tensor, batch: AdversarialBatch) -> Tensor:
        mask = position_mask(batch.token_mask, output)
        noise = initial_noise(output, batch.noise_seeds, mask, distribution="uniform")
        # init_mag / sqrt(L * d): L the example's real positions, d the width.
        lengths = mask.reshape(mask.shape[0], -1).sum(dim=1).clamp_min(1)
        scale = self.config.init_mag / torch.sqrt(lengths * output.shape[-1])
        unit = length_unit(self.config.radius, output, mask, self.config.p_norm, self.config.norm_level)
        return noise * scale.reshape(-1, *([1] * (output.dim() - 1))) * unit


@dataclass(frozen=True)
class FreeATConfig:
    """FreeAT, "adversarial training for free" (Shafahi et al. 2019, arXiv:1904.12843), Alg. 1: every
    minibatch is replayed ``replays`` (m) times; each replay's one backward updates the parameters (one
    optimizer step) and the perturbation, ``delta <- clip(delta + eps * sign(g), -eps, eps)``. The paper
    uses m = 8 on CIFAR-10 and 4 on ImageNet; m = 2 keeps a language-model epoch affordable. The
    perturbation starts at 0 for every batch (shapes differ between text batches). eps 1e-3 per coordinate
    (``radius absolute``) is about 2% of a MiniLM token's norm; ``radius relative`` reads it as a fraction of
    each token's root-mean-square coordinate."""

    replays: int = 2
    epsilon: float = 1e-3
    radius: Radius = Radius.ABSOLUTE

    def __post_init__(self) -> None:
        object.__setattr__(self, "radius", Radius(self.radius))
        if self.replays < 1:
            raise ValueError(f"FreeAT needs replays >= 1, got {self.replays}")
        check_non_negative("FreeAT", self, "epsilon")


class FreeAT(AdversarialMethod):
    """One pass per replay; the trainer replays each batch ``replays`` times, one optimizer step each."""

    name = AdversarialMethodName.FREEAT
    owns_backward = True

    def __init__(self, target: nn.Module, config: FreeATConfig | None = None) -> None:
        super().__init__(target)
        self.config = config or FreeATConfig()
        self._deltas: dict[Hashable, Tensor] = {}
        self._counts: dict[Hashable, int] = {}

    @property
    def replays(self) -> int:
        return self.config.replays

    def __call__(self, batch: AdversarialBatch) -> AdversarialStep:
        replay = self._replay_index(batch)
        if replay == 0:
            self._deltas.pop(batch.key, None)
        previous = self._deltas.get(batch.key)

        def make(out: Tensor) -> Tensor:
            if previous is not None and previous.shape == out.shape:
                return _leaf(previous)
            return torch.zeros(out.shape, device=out.device, dtype=torch.float32, requires_grad=True)

        with perturb_output(self.target, make) as seen:
            outputs = batch.run()
        assert seen.delta is not None and seen.output is not None
        loss = batch.loss(outputs)
        batch.backward(loss)
        output = seen.output.detach()
        mask = position_mask(batch.token_mask, output)
        used = seen.delta.detach()
        grad = seen.delta.grad if seen.delta.grad is not None else torch.zeros_like(used)
        grad, finite = finite_or_zero(grad)
        if replay + 1 < self.replays:
            unit = length_unit(self.config.radius, output, mask, PNorm.INF, NormLevel.TOKEN)
            epsilon = scale_length(self.config.epsilon, unit)
            self._deltas[batch.key] = (
                project(used + epsilon * grad.sign(), PNorm.INF, epsilon, NormLevel.TOKEN) * mask
            )
        else:
            self._deltas.pop(batch.key, None)
        return AdversarialStep(loss.detach(), None, True, _step_stats(loss, used, output, mask, finite), used)

    def _replay_index(self, batch: AdversarialBatch) -> int:
        """The batch's replay index: the caller's, or (``replay=None``) this key's count of calls modulo m."""
        if batch.replay is not None:
            return batch.replay
        count = self._counts.get(batch.key, 0)
        self._counts[batch.key] = (count + 1) % self.replays
        return count


@dataclass(frozen=True)
class YOPOConfig:
    """YOPO-m-n (Zhang et al. 2019, arXiv:1905.00877): ``outer_steps`` (m) full forward/backward passes
    per batch - their parameter gradients averaged into one update - and after each, ``k`` (n) cheap
    updates of the perturbation that rerun only the first layer f0 with the rest of the network's co-state
    p = dJ/d f0 frozen: ``delta <- clip(delta + step_size * sign(grad_delta <p, f0(x + delta)>), -eps, eps)``.
    The paper's YOPO-5-3 uses step = eps / 4; delta starts uniform in the eps ball. ``radius`` as FreeAT's."""

    outer_steps: int = 2
    k: int = 3
    step_size: float = 2.5e-4
    epsilon: float = 1e-3
    radius: Radius = Radius.ABSOLUTE

    def __post_init__(self) -> None:
        object.__setattr__(self, "radius", Radius(self.radius))
        if self.outer_steps < 1 or self.k < 1:
            raise ValueError(f"YOPO needs outer_steps >= 1 and k >= 1, got {self.outer_steps}, {self.k}")
        check_non_negative("YOPO", self, "step_size", "epsilon")


class YOPO(AdversarialMethod):
    """``first_layer`` is the module whose output the co-state is taken at; it contains ``target`` or is it
    (for an HF encoder: the embeddings block - word + position + type embeddings and LayerNorm). Its inner
    reruns replay the outer pass's random state, so its dropout mask matches the pass p came from."""

    name = AdversarialMethodName.YOPO
    owns_backward = True

    def __init__(
        self, target: nn.Module, config: YOPOConfig | None = None, first_layer: nn.Module | None = None
    ) -> None:
        super().__init__(target)
        self.config = config or YOPOConfig()
        self.first_layer = first_layer if first_layer is not None else target

    @classmethod
    def from_site(cls, site: AdversarialSite, config: YOPOConfig) -> YOPO:
        """YOPO on ``site.first_layer``, which must be given and contain ``site.target`` (or be it)."""
        first_layer = site.first_layer
        if first_layer is None:
            raise MissingSitePart(
                cls.name, SitePart.FIRST_LAYER, "YOPO reruns it alone for its inner updates"
            )
        if not any(module is site.target for module in first_layer.modules()):
            raise ValueError(
                f"YOPO: the first layer {type(first_layer).__name__} does not contain the target"
            )
        return cls(site.target, config, first_layer=first_layer)

    def __call__(self, batch: AdversarialBatch) -> AdversarialStep:
        config = self.config
        device = device_of(self.target, batch.token_mask)
        delta: Tensor | None = None
        output = mask = torch.empty(0)
        finite = torch.ones((), dtype=torch.bool, device=device)
        total = torch.zeros((), device=device)
        for outer in range(config.outer_steps):
            last = outer + 1 == config.outer_steps
            rng = RngSnapshot.capture(device)
            # Pass 0 draws its initial noise (without per-row seeds: from the global RNG) inside the first
            # layer; its inner reruns restore the state after that draw there, so their dropout matches.
            after_noise = _AfterNoise(rng if outer == 0 and batch.noise_seeds is None else None)
            call = _FirstLayerCall()
            make: Callable[[Tensor], Tensor]
            if delta is None:
                make = lambda out, noise=after_noise: noise.drawn(self._initial_delta(out, batch))  # noqa: E731
            else:
                make = lambda out, current=delta: current  # noqa: E731
            with call.recording(self.first_layer), perturb_output(self.target, make) as seen:
                outputs = (batch.run if last else batch.inner_run)()
            assert seen.delta is not None and seen.output is not None
            if outer == 0:
                output = seen.output.detach()
                mask = position_mask(batch.token_mask, output)
            loss = batch.loss(outputs)
            batch.backward(loss / config.outer_steps)
            total = total + loss.detach() / config.outer_steps
            delta = seen.delta.detach()
            costate, step_finite = finite_or_zero(call.costate())
            finite = finite & step_finite
            if not last:
                delta = self._inner_updates(delta, costate, call, rng, mask, output, after_noise)
        assert delta is not None
        return AdversarialStep(total, None, True, _step_stats(total, delta, output, mask, finite), delta)

    def _inner_updates(
        self,
        delta: Tensor,
        costate: Tensor,
        call: _FirstLayerCall,
        rng: RngSnapshot,
        mask: Tensor,
        output: Tensor,
        after_noise: _AfterNoise,
    ) -> Tensor:
        """n sign-ascent steps on <p, f0(x + delta)>, rerunning only the first layer."""
        config = self.config
        unit = length_unit(config.radius, output, mask, PNorm.INF, NormLevel.TOKEN)
        step_size, epsilon = scale_length(config.step_size, unit), scale_length(config.epsilon, unit)
        for _ in range(config.k):
            delta = _leaf(delta)
            with add_to_output(self.target, delta), rng.replay(), after_noise.restoring_at(self.target):
                first_output = call.rerun(self.first_layer)
            (grad,) = torch.autograd.grad((costate * first_output.float()).sum(), delta)
            grad, _ = finite_or_zero(grad)
            delta = (
                project(delta.detach() + step_size * grad.sign(), PNorm.INF, epsilon, NormLevel.TOKEN) * mask
            )
        return delta

    def _initial_delta(self, output: Tensor, batch: AdversarialBatch) -> Tensor:
        mask = position_mask(batch.token_mask, output)
        noise = initial_noise(output, batch.noise_seeds, mask, distribution="uniform")
        unit = length_unit(self.config.radius, output, mask, PNorm.INF, NormLevel.TOKEN)
        return noise * scale_length(self.config.epsilon, unit)


class _AfterNoise:
    """The random state right after a pass drew its initial noise from the global RNG, to restore it at the
    same point (the target's output) when a later pass replays that pass's random state. Inert when built
    with ``None`` (no replay, or per-row seeds that leave the global RNG alone)."""

    def __init__(self, rng: RngSnapshot | None) -> None:
        self.rng = rng
        self.state: RngSnapshot | None = None

    def drawn(self, noise: Tensor) -> Tensor:
        """Call right after drawing ``noise`` (returned as it is): records the state it left."""
        if self.rng is not None:
            self.state = RngSnapshot.capture(self.rng.device)
        return noise

    def restored(self, value: Tensor) -> Tensor:
        """Call at the target's output inside ``rng.replay()``: the state becomes the recorded one."""
        if self.state is not None:
            torch.set_rng_state(self.state.cpu)
            if self.state.accelerator is not None:
                torch.cuda.set_rng_state(self.state.accelerator, self.state.device)
        return value

    @contextlib.contextmanager
    def restoring_at(self, module: nn.Module) -> Iterator[None]:
        """While the block runs, ``module``'s forward restores the recorded state (inside a replay fork)."""
        if self.state is None:
            yield
            return
        handle = module.register_forward_hook(lambda mod, args, out: self.restored(out))
        try:
            yield
        finally:
            handle.remove()


class _FirstLayerCall:
    """The first layer's inputs and output in one full pass, and the gradient (co-state) at that output."""

    def __init__(self) -> None:
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = {}
        self._grad: Tensor | None = None
        self._calls = 0

    def recording(self, module: nn.Module) -> _Recording:
        return _Recording(self, module)

    def costate(self) -> Tensor:
        if self._grad is None:
            raise RuntimeError("YOPO: the first layer's output got no gradient; is it on the loss's path?")
        return self._grad.detach().float()

    def rerun(self, module: nn.Module) -> Tensor:
        output = module(*self.args, **self.kwargs)
        if not isinstance(output, Tensor):
            raise TypeError(f"YOPO: the first layer {type(module).__name__} must return a single tensor")
        return output


class _Recording:
    def __init__(self, call: _FirstLayerCall, module: nn.Module) -> None:
        self.call, self.module = call, module
        self.handles: list[Any] = []

    def __enter__(self) -> _FirstLayerCall:
        call = self.call

        def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            call.args, call.kwargs = args, dict(kwargs)
            call._calls += 1

        def after(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                raise TypeError(f"YOPO: the first layer {type(module).__name__} must return a single tensor")
            if output.requires_grad:
                output.register_hook(self._store)

        self.handles = [
            self.module.register_forward_pre_hook(before, with_kwargs=True),
            self.module.register_forward_hook(after),
        ]
        return call

    def _store(self, grad: Tensor) -> None:
        self.call._grad = grad

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        if exc[0] is None and self.call._calls != 1:
            raise RuntimeError(f"YOPO: the first layer ran {self.call._calls} times in one forward pass")
