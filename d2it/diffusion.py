"""Gaussian diffusion as DiT uses it (iDDPM): linear betas, epsilon prediction, learned interpolated
variance trained with the hybrid loss (MSE + L_vlb), respacing, DDPM and DDIM samplers, CFG.

Every function takes its noise from the caller, so multi-grained noise (coarse noise copied 2x2)
plugs in without special cases; samplers also take a projection applied after every step.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

NoiseFn = Callable[[tuple], torch.Tensor]
Project = Callable[[torch.Tensor], torch.Tensor]


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    """DDPM's linear schedule 1e-4 .. 2e-2, rescaled so any T gives the same curve as T = 1000."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 2e-2, num_timesteps, dtype=np.float64)


def spaced_timesteps(num_timesteps: int, count: int) -> list[int]:
    """`count` evenly spaced steps of 0..T-1, first and last included (iDDPM's single-section
    rule)."""
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"cannot take {count} steps from {num_timesteps}")
    if count == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (count - 1)
    return sorted({round(i * stride) for i in range(count)})


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_std_normal_cdf(x):
    """The tanh approximation of the standard normal CDF that DiT's L_vlb uses (its t = 0 term
    differs from the exact CDF by ~0.1 %): the baseline's loss is DiT's loss."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """log-likelihood of data in [-1, 1] quantised to 256 levels (the t = 0 term of L_vlb)."""
    centred, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus = approx_std_normal_cdf(inv_std * (centred + 1 / 255))
    cdf_min = approx_std_normal_cdf(inv_std * (centred - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class GaussianDiffusion:
    """q and p of a (possibly respaced) chain. `timesteps[i]` is the original step the model sees
    for chain index i, so a respaced chain runs the model trained on the full one."""

    def __init__(self, betas: np.ndarray, learn_sigma: bool = True,
                 timesteps: list[int] | None = None):
        self.betas = betas = np.asarray(betas, dtype=np.float64)
        self.num_timesteps = len(betas)
        self.learn_sigma = learn_sigma
        self.timesteps = torch.tensor(timesteps if timesteps is not None else range(len(betas)))
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.posterior_variance = betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        # The variance at t = 0 is 0: clip the log with the t = 1 value, as iDDPM.
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1],
                                                               self.posterior_variance[1:]))
        self.posterior_mean_coef1 = (betas * np.sqrt(self.alphas_cumprod_prev)
                                     / (1 - self.alphas_cumprod))
        self.posterior_mean_coef2 = ((1 - self.alphas_cumprod_prev) * np.sqrt(alphas)
                                     / (1 - self.alphas_cumprod))

    @classmethod
    def dit(cls, num_timesteps: int = 1000, sampling_steps: int | None = None,
            learn_sigma: bool = True):
        """DiT's process (linear betas, T = 1000), respaced to `sampling_steps` if given."""
        betas = linear_betas(num_timesteps)
        if sampling_steps is None or sampling_steps == num_timesteps:
            return cls(betas, learn_sigma)
        kept = spaced_timesteps(num_timesteps, sampling_steps)
        alphas_cumprod = np.cumprod(1.0 - betas)[kept]
        new_betas = 1 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])
        return cls(new_betas, learn_sigma, kept)

    @staticmethod
    def _at(array: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = torch.from_numpy(array).to(like.device)[t].to(like.dtype)
        return out.reshape(-1, *([1] * (like.dim() - 1)))

    # -- forward process -----------------------------------------------------------------------
    def q_mean_variance(self, x0, t):
        return (self._at(np.sqrt(self.alphas_cumprod), t, x0) * x0,
                self._at(1 - self.alphas_cumprod, t, x0))

    def q_sample(self, x0, t, noise):
        return (self._at(np.sqrt(self.alphas_cumprod), t, x0) * x0
                + self._at(np.sqrt(1 - self.alphas_cumprod), t, x0) * noise)

    def q_posterior(self, x0, xt, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (self._at(self.posterior_mean_coef1, t, xt) * x0
                + self._at(self.posterior_mean_coef2, t, xt) * xt)
        return (mean, self._at(self.posterior_variance, t, xt),
                self._at(self.posterior_log_variance_clipped, t, xt))

    # -- reverse process -----------------------------------------------------------------------
    def x0_from_eps(self, xt, t, eps):
        return (self._at(np.sqrt(1 / self.alphas_cumprod), t, xt) * xt
                - self._at(np.sqrt(1 / self.alphas_cumprod - 1), t, xt) * eps)

    def eps_from_x0(self, xt, t, x0):
        return ((self._at(np.sqrt(1 / self.alphas_cumprod), t, xt) * xt - x0)
                / self._at(np.sqrt(1 / self.alphas_cumprod - 1), t, xt))

    def split_output(self, out: torch.Tensor,
                     channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (out[:, :channels], out[:, channels:]) if self.learn_sigma else (out, None)

    def p_mean_variance(self, out, xt, t, clip_denoised: bool = False):
        """Mean, log-variance and x0 estimate of p(x_{t-1} | x_t) from the model output at chain
        step t."""
        eps, v = self.split_output(out, xt.shape[1])
        if v is None:  # fixed variance: the upper bound beta_t (posterior variance at t = 0)
            logvar = self._at(np.log(np.append(self.posterior_variance[1], self.betas[1:])), t, xt)
        else:  # learned range: interpolate between the posterior variance and beta in log space
            frac = (v + 1) / 2
            logvar = (frac * self._at(np.log(self.betas), t, xt)
                      + (1 - frac) * self._at(self.posterior_log_variance_clipped, t, xt))
        x0 = self.x0_from_eps(xt, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior(x0, xt, t)
        return mean, logvar, x0, eps

    def training_maps(self, model_fn, x0, t, noise) -> dict[str, torch.Tensor]:
        """Per-position loss maps (B x H x W, averaged over channels) of the hybrid objective:
        ε-MSE and L_vlb in bits. The caller reduces them (plain mean for DiT, per grain for
        D²iT)."""
        xt = self.q_sample(x0, t, noise)
        out = model_fn(xt, self.timesteps.to(t.device)[t])
        eps, v = self.split_output(out, x0.shape[1])
        maps = {"mse": (eps - noise).square().mean(1)}
        if v is not None:
            # The vlb term trains the variance only: the mean is built from a detached ε.
            frozen = torch.cat([eps.detach(), v], dim=1)
            mean, logvar, _, _ = self.p_mean_variance(frozen, xt, t)
            true_mean, _, true_logvar = self.q_posterior(x0, xt, t)
            kl = normal_kl(true_mean, true_logvar, mean, logvar) / math.log(2.0)
            nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar) / math.log(2.0)
            maps["vlb"] = torch.where((t == 0).reshape(-1, 1, 1, 1), nll, kl).mean(1)
        return maps

    # -- samplers ------------------------------------------------------------------------------
    def _model(self, model_fn, x, i):
        t = torch.full((len(x),), i, device=x.device, dtype=torch.long)
        return t, model_fn(x, self.timesteps.to(x.device)[t])

    @torch.no_grad()
    def ddpm_sample(self, model_fn, noise_fn: NoiseFn, shape: tuple, project: Project = lambda x: x,
                    progress: bool = False) -> torch.Tensor:
        """Ancestral sampling; noise_fn(shape) draws x_T and every step's noise."""
        x = project(noise_fn(shape))
        for i in tqdm(range(self.num_timesteps - 1, -1, -1), desc="ddpm", disable=not progress):
            t, out = self._model(model_fn, x, i)
            mean, logvar, _, _ = self.p_mean_variance(out, x, t)
            x = mean + (torch.exp(0.5 * logvar) * noise_fn(shape) if i > 0 else 0)
            x = project(x)
        return x

    @torch.no_grad()
    def ddim_sample(self, model_fn, noise_fn: NoiseFn, shape: tuple, project: Project = lambda x: x,
                    eta: float = 0.0, progress: bool = False) -> torch.Tensor:
        x = project(noise_fn(shape))
        for i in tqdm(range(self.num_timesteps - 1, -1, -1), desc="ddim", disable=not progress):
            t, out = self._model(model_fn, x, i)
            _, _, x0, _ = self.p_mean_variance(out, x, t)
            eps = self.eps_from_x0(x, t, x0)
            abar = self._at(self.alphas_cumprod, t, x)
            abar_prev = self._at(self.alphas_cumprod_prev, t, x)
            sigma = (eta * torch.sqrt((1 - abar_prev) / (1 - abar))
                     * torch.sqrt(1 - abar / abar_prev))
            x = x0 * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
            if i > 0 and eta > 0:
                x = x + sigma * noise_fn(shape)
            x = project(x)
        return x


def guided(model_fn, null_label: int, scale: float, channels: int | None = None):
    """Classifier-free guidance: ε = ε_uncond + s (ε_cond - ε_uncond) on the first `channels` ε
    channels (all when None; DiT's released sampler guides 3 of 4). Batches both branches."""
    def fn(x, t, y, **kw):
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]),
                       torch.cat([y, torch.full_like(y, null_label)]),
                       **{k: torch.cat([v, v]) for k, v in kw.items()})
        cond, uncond = out.chunk(2)
        c = channels if channels is not None else x.shape[1]
        eps = uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([eps, cond[:, c:]], dim=1)
    return fn
